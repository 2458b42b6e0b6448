"""Shared helpers of the package tests: parties, a package writer shortcut, byte surgery."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from protocol.keys import PartyKeys, PublicBundle
from protocol.layout import new_package_id, package_filename
from protocol.package import PackageWriter, open_package

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
    import hashlib

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
