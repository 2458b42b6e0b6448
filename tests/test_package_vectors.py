"""Checked-in test vectors (tests/vectors/): fixed keys, fixed packages, expected header and plaintext.

Another implementation (the platform's) validates itself against the same files; the
intermediate values in ``<name>.json`` are recomputed here from first principles.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import ExpiredError
from protocol.keys import PartyKeys, PublicBundle
from protocol.package import SUPPORTED_SUITES, open_package
from tests.vectors import generate

VECTORS = Path(generate.__file__).resolve().parent
NAMES = sorted(generate.VECTORS)
#: Computed here with the libraries directly, not with protocol.package's table of suites.
PAYLOAD_DIGESTS: dict[str, Callable[[bytes], str]] = {
    "ed25519-x25519-hkdf-sha256-aes256gcm-sha256-zstd": lambda data: hashlib.sha256(data).hexdigest(),
    "ed25519-x25519-hkdf-sha256-aes256gcm-blake3-zstd": lambda data: blake3.blake3(data).hexdigest(),
}


def load(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    return result


def party(spec: dict[str, Any]) -> PartyKeys:
    return PartyKeys.from_private_bytes(
        spec["party_id"], bytes.fromhex(spec["ed25519_private"]), bytes.fromhex(spec["x25519_private"])
    )


@pytest.mark.parametrize("name", NAMES)
def test_vector_reads_to_expected_header_and_plaintext(name: str) -> None:
    spec = load(name)
    sender = PublicBundle.from_dict(spec["sender"]["bundle"])
    recipient = party(spec["recipient"])
    assert recipient.public_bundle() == PublicBundle.from_dict(spec["recipient"]["bundle"])
    now = datetime.fromisoformat(spec["now_for_checks"].replace("Z", "+00:00"))
    with open_package(
        VECTORS / f"{name}.pkg", trusted_senders={"platform": sender}, recipient=recipient, now=now
    ) as p:
        assert p.header.raw == (VECTORS / f"{name}.header.json").read_bytes()
        assert b"".join(p.iter_plaintext()) == (VECTORS / f"{name}.plaintext").read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_vector_intermediate_values_from_first_principles(name: str) -> None:
    spec = load(name)
    data = (VECTORS / f"{name}.pkg").read_bytes()
    header_raw = (VECTORS / f"{name}.header.json").read_bytes()
    header = json.loads(header_raw)

    # framing
    assert data[:8] == b"\x89EDUPKG\x01"
    assert (
        int.from_bytes(data[8:12], "big") == len(header_raw) and data[12 : 12 + len(header_raw)] == header_raw
    )
    assert hashlib.sha256(header_raw).hexdigest() == spec["header_sha256"]
    at = 12 + len(header_raw)
    assert data[at : at + 32].hex() == spec["sender"]["bundle"]["signing_key_id"]
    assert int.from_bytes(data[at + 32 : at + 34], "big") == 64
    assert spec["payload_offset"] == at + 34 + 64

    # signature: Ed25519 is deterministic, so the recorded signature is recomputable
    signing = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["sender"]["ed25519_private"]))
    message = b"edu-sync package v1 signature\x00" + data[:12] + header_raw
    assert signing.sign(message).hex() == spec["signature"] == data[at + 34 : at + 98].hex()

    # key wrap: X25519(recipient, ephemeral) -> HKDF-SHA256 -> AES-256-GCM(zero nonce, AD = package id)
    ephemeral_public = base64.b64decode(header["key_wrap"]["ephemeral_public_key"])
    assert (
        X25519PrivateKey.from_private_bytes(bytes.fromhex(spec["ephemeral_x25519_private"]))
        .public_key()
        .public_bytes_raw()
        == ephemeral_public
    )
    recipient_private = X25519PrivateKey.from_private_bytes(
        bytes.fromhex(spec["recipient"]["x25519_private"])
    )
    shared = recipient_private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    package_id = bytes.fromhex(header["package_id"])
    kek = HKDF(
        hashes.SHA256(),
        32,
        salt=ephemeral_public + recipient_private.public_key().public_bytes_raw(),
        info=b"edu-sync package v1 key wrap" + package_id,
    ).derive(shared)
    wrapped = base64.b64decode(header["key_wrap"]["wrapped_key"])
    data_key = AESGCM(kek).decrypt(bytes(12), wrapped, package_id)
    assert data_key.hex() == spec["data_key"]

    # payload: digest over the ciphertext (the algorithm the suite names), then chunk by chunk
    payload = data[spec["payload_offset"] :]
    assert PAYLOAD_DIGESTS[header["suite"]](payload) == header["payload"]["digest"]
    assert len(payload) == header["payload"]["ciphertext_bytes"]
    compressed = b""
    for index, chunk in enumerate(spec["chunks"]):
        final = index == len(spec["chunks"]) - 1
        nonce = index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")
        ad = package_id + index.to_bytes(8, "big")
        assert (nonce.hex(), ad.hex()) == (chunk["nonce"], chunk["associated_data"])
        sealed = data[chunk["offset"] : chunk["offset"] + chunk["length"]]
        assert hashlib.sha256(sealed).hexdigest() == chunk["sha256"]
        compressed += AESGCM(data_key).decrypt(nonce, sealed, ad)
    plaintext = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True).read()
    assert plaintext == (VECTORS / f"{name}.plaintext").read_bytes()
    assert hashlib.sha256(plaintext).hexdigest() == spec["plaintext_sha256"]
    assert header["counts"]["plaintext_bytes"] == len(plaintext)


@pytest.mark.parametrize("name", NAMES)
def test_generator_reproduces_the_checked_in_bytes(name: str, tmp_path: Path) -> None:
    spec = load(name)
    if spec["zstd_version"] != list(zstandard.ZSTD_VERSION):
        pytest.skip(f"vectors made with zstd {spec['zstd_version']}, this is {zstandard.ZSTD_VERSION}")
    rebuilt = generate.build(name, tmp_path)
    assert rebuilt.read_bytes() == (VECTORS / f"{name}.pkg").read_bytes()


def test_vector_is_expired_after_its_expiry() -> None:
    spec = load("v1-snapshot")
    with pytest.raises(ExpiredError):
        open_package(
            VECTORS / "v1-snapshot.pkg",
            trusted_senders={"platform": PublicBundle.from_dict(spec["sender"]["bundle"])},
            recipient=party(spec["recipient"]),
            now=datetime(2099, 1, 1, tzinfo=timezone.utc),
        )


def test_every_suite_has_a_vector() -> None:
    suites = {json.loads((VECTORS / f"{name}.header.json").read_bytes())["suite"] for name in NAMES}
    assert suites == set(PAYLOAD_DIGESTS) == SUPPORTED_SUITES
