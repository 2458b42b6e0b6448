"""Shared helpers of the package tests: parties, a package writer shortcut, byte surgery."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.header import canonical_json
from protocol.keys import PartyKeys, PublicBundle
from protocol.layout import new_package_id, package_filename
from protocol.package import (
    PAYLOAD_HASHES,
    PREFIX,
    SIGNATURE_CONTEXT,
    TAG_BYTES,
    Envelope,
    PackageWriter,
    chunk_ad,
    chunk_nonce,
    open_package,
    read_envelope,
    wrap_data_key,
)

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)

PLATFORM = PartyKeys.generate("platform")
AGENT = PartyKeys.generate("school-1")
OTHER_AGENT = PartyKeys.generate("school-2")
TRUSTED: Mapping[str, PublicBundle] = {"platform": PLATFORM.public_bundle()}


def write_package(
    directory: Path,
    payload: bytes,
    *,
    sender: PartyKeys = PLATFORM,
    recipient: PartyKeys = AGENT,
    subscription: str = "sub-1",
    sequence: int = 1,
    chunk_size: int = 1024,
    write_size: int = 4096,
    **fields: Any,
) -> Path:
    """Write ``payload`` as a package and return its path."""
    package_id = fields.pop("package_id", None) or new_package_id()
    path = directory / package_filename(subscription, sequence, package_id)
    fields.setdefault("kind", "snapshot")
    fields.setdefault("created", NOW - timedelta(hours=1))
    fields.setdefault("expires", NOW + timedelta(days=1))
    with PackageWriter(
        path,
        sender=sender,
        recipient=recipient.public_bundle(),
        subscription=subscription,
        sequence=sequence,
        package_id=package_id,
        chunk_size=chunk_size,
        **fields,
    ) as writer:
        for start in range(0, len(payload), write_size):
            writer.write(payload[start : start + write_size])
    return path


def read_all(path: Path, *, recipient: PartyKeys = AGENT, **kwargs: Any) -> bytes:
    kwargs.setdefault("trusted_senders", TRUSTED)
    kwargs.setdefault("now", NOW)
    with open_package(path, recipient=recipient, **kwargs) as package:
        return b"".join(package.iter_plaintext())


def incompressible(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that zstd cannot shrink (so chunk counts are predictable)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(8, "big") + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def rewrite(path: Path, data: bytes) -> Path:
    tampered = path.with_name("tampered-" + path.name)
    tampered.write_bytes(data)
    os.chmod(tampered, 0o640)
    return tampered


# ------------------------------------------------------------------ byte-level surgery


def envelope_of(path: Path) -> Envelope:
    with open(path, "rb") as handle:
        return read_envelope(handle.fileno())


def chunk_spans(path: Path) -> list[tuple[int, int]]:
    """(start, end) file offsets of every payload chunk."""
    envelope = envelope_of(path)
    info = json.loads(envelope.header_raw)["payload"]
    full = info["chunk_size"] + TAG_BYTES
    start = envelope.payload_offset
    end = start + info["ciphertext_bytes"]
    return [(offset, min(offset + full, end)) for offset in range(start, end, full)]


def assemble(
    header: dict[str, Any],
    payload: bytes,
    signer: PartyKeys = PLATFORM,
    *,
    payload_fields: Mapping[str, Any] | None = None,
) -> bytes:
    """A complete package file from a header dict and payload bytes, validly signed by ``signer``.

    Plays a *trusted sender* that lies (or a bug in one): used to reach the checks behind
    the signature and the payload digest.  The payload fields are recomputed from the bytes
    unless ``payload_fields`` overrides them.
    """
    chunk_size = header["payload"]["chunk_size"]
    header = {
        **header,
        "payload": {
            "chunk_size": chunk_size,
            "chunks": max(1, -(-len(payload) // (chunk_size + TAG_BYTES))),
            "ciphertext_bytes": len(payload),
            "digest": _payload_digest(header["suite"], payload),
            **(payload_fields or {}),
        },
    }
    raw = canonical_json(header)
    signature = signer.signing_key.sign(SIGNATURE_CONTEXT + PREFIX + len(raw).to_bytes(4, "big") + raw)
    signer_id = bytes.fromhex(signer.public_bundle().signing_key_id)
    sig_block = signer_id + len(signature).to_bytes(2, "big") + signature
    return PREFIX + len(raw).to_bytes(4, "big") + raw + sig_block + payload


def _payload_digest(suite: str, payload: bytes) -> str:
    """The suite's payload digest (SHA-256 for a suite no reader knows: it is refused first)."""
    digest = PAYLOAD_HASHES.get(suite, hashlib.sha256)()
    digest.update(payload)
    return digest.hexdigest()


def split(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header dict, payload bytes) of a package file."""
    envelope = envelope_of(path)
    return json.loads(envelope.header_raw), path.read_bytes()[envelope.payload_offset :]


def encrypt_stream(compressed: bytes, package_id: str, chunk_size: int, data_key: bytes) -> bytes:
    """The payload a correct writer makes of an already-compressed stream."""
    aead = AESGCM(data_key)
    pieces = [compressed[i : i + chunk_size] for i in range(0, len(compressed), chunk_size)] or [b""]
    return b"".join(
        aead.encrypt(chunk_nonce(i, i == len(pieces) - 1), piece, chunk_ad(package_id, i))
        for i, piece in enumerate(pieces)
    )


def craft(
    template: Path,
    compressed: bytes,
    *,
    declared: int,
    recipient: PartyKeys = AGENT,
    signer: PartyKeys = PLATFORM,
) -> bytes:
    """A package with the template's header but an arbitrary compressed stream and declared size."""
    header, _ = split(template)
    data_key = os.urandom(32)
    ephemeral, wrapped = wrap_data_key(data_key, recipient.public_bundle(), header["package_id"])
    header["key_wrap"] = {
        "ephemeral_public_key": base64.b64encode(ephemeral).decode(),
        "wrapped_key": base64.b64encode(wrapped).decode(),
    }
    header["counts"] = {**header["counts"], "plaintext_bytes": declared}
    payload = encrypt_stream(compressed, header["package_id"], header["payload"]["chunk_size"], data_key)
    return assemble(header, payload, signer)
