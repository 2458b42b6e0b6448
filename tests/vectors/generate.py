"""Regenerate the checked-in package test vectors: ``python -m tests.vectors.generate``.

Everything that is random in normal operation is fixed here (private keys, the data key,
the ephemeral X25519 key, the package id, the times), so the production writer produces
the same bytes every run for a given zstd version.  Each vector is written as:

* ``<name>.pkg``             the package file
* ``<name>.header.json``     the exact signed header bytes (canonical JSON)
* ``<name>.plaintext``       the expected plaintext
* ``<name>.json``            the inputs and intermediate values (hex) for another implementation
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.keys import PartyKeys
from protocol.package import SUITE_BLAKE3, SUITE_V1, PackageWriter

HERE = Path(__file__).resolve().parent
SENDER_SIGNING = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SENDER_ENCRYPTION = bytes(range(0x20, 0x40))
RECIPIENT_SIGNING = bytes(range(0x40, 0x60))
RECIPIENT_ENCRYPTION = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
CREATED = datetime(2026, 11, 1, 8, 0, 0, tzinfo=timezone.utc)
EXPIRES = datetime(2099, 1, 1, 0, 0, 0, tzinfo=timezone.utc)
CHUNK_SIZE = 256


def sender() -> PartyKeys:
    return PartyKeys.from_private_bytes("platform", SENDER_SIGNING, SENDER_ENCRYPTION)


def recipient() -> PartyKeys:
    return PartyKeys.from_private_bytes("school-0001", RECIPIENT_SIGNING, RECIPIENT_ENCRYPTION)


def snapshot_plaintext() -> bytes:
    """Canonical table CSV (docs/architecture.md): op, then one quoted field per column; NULL empty."""
    rows = []
    for i in range(1, 61):
        name = ["张三", "李四", "王五", "赵六"][i % 4]
        note = "" if i % 5 == 0 else f'备注 {i}, 含逗号与"引号"'
        phone = "" if i % 7 == 0 else f'"1380000{i:04d}"'
        note_field = '""' if note == "" else '"' + note.replace('"', '""') + '"'
        rows.append(f'U,"{i}","{name}",{note_field},{phone},"2026-10-{1 + i % 28:02d} 08:00:00"\n')
    rows.append('D,"61",,,,\n')
    return "".join(rows).encode("utf-8")


def _key_bucket(key: str) -> int:
    from protocol.digest import bucket_of

    return bucket_of(('"' + key + '"').encode("utf-8"))  # the canonical encoding of a one-column key


RESEND_BUCKETS = sorted({_key_bucket("7"), _key_bucket("42")})


def bucket_resend_plaintext() -> bytes:
    """The snapshot's upserts whose key is in RESEND_BUCKETS (the answer to a resend_buckets request)."""
    lines = snapshot_plaintext().decode("utf-8").splitlines(keepends=True)
    upserts = [line for line in lines if line.startswith("U,")]
    keep = [line for line in upserts if _key_bucket(line.split('"')[1]) in RESEND_BUCKETS]
    return "".join(keep).encode("utf-8")


VECTORS: dict[str, dict[str, Any]] = {
    "v1-snapshot": {
        "plaintext": snapshot_plaintext,
        "fields": {
            "suite": SUITE_V1,
            "kind": "snapshot",
            "subscription": "sub-teacher-papers",
            "sequence": 1,
            "builds_on": None,
            "catalog": {
                "resource_name": "人事处数据-教职工科技论文信息",
                "mounted_resource_name": "教职工科技论文信息表",
                "update_frequency": "每天",
                "provision_method": "库表",
            },
            "schema": [
                {"name": "ID", "label": "编号", "type": "NUMBER(10)", "not_null": True, "primary_key": True},
                {
                    "name": "XM",
                    "label": "姓名",
                    "type": "VARCHAR2(50)",
                    "not_null": True,
                    "primary_key": False,
                },
                {
                    "name": "BZ",
                    "label": "备注",
                    "type": "VARCHAR2(200)",
                    "not_null": False,
                    "primary_key": False,
                },
                {
                    "name": "DH",
                    "label": "电话",
                    "type": "VARCHAR2(20)",
                    "not_null": False,
                    "primary_key": False,
                },
                {
                    "name": "UPDATETIME",
                    "label": "更新时间",
                    "type": "VARCHAR2(50)",
                    "not_null": True,
                    "primary_key": False,
                    "format": "YYYY-MM-DD HH:MM:SS",
                },
            ],
            "counts": {"rows_upserted": 60, "rows_deleted": 1},
            "expected_state": {"rows": 60},
        },
        "package_id": "0123456789abcdef0123456789abcdef",
        "data_key": bytes(range(0x80, 0xA0)),
        "ephemeral": bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
    },
    "v1-bucket-resend": {
        "plaintext": bucket_resend_plaintext,
        "fields": {
            "suite": SUITE_V1,
            "kind": "delta",
            "subscription": "sub-teacher-papers",
            "sequence": 3,
            "builds_on": 2,
            "replace_buckets": RESEND_BUCKETS,
            "counts": {"rows_upserted": len(bucket_resend_plaintext().splitlines()), "rows_deleted": 0},
            "expected_state": {"rows": 60},
        },
        "package_id": "00112233445566778899aabbccddeeff",
        "data_key": bytes(range(0x40, 0x60)),
        "ephemeral": bytes(range(0x60, 0x80)),
    },
    "v1-empty-receipt": {
        "plaintext": lambda: b"",
        "fields": {
            "suite": SUITE_V1,
            "kind": "receipt",
            "subscription": "sub-teacher-papers",
            "sequence": 2,
            "builds_on": 1,
        },
        "package_id": "fedcba9876543210fedcba9876543210",
        "data_key": bytes(32),
        "ephemeral": bytes(range(0xA0, 0xC0)),
    },
    "v1-blake3-snapshot": {
        "plaintext": snapshot_plaintext,
        "fields": {
            "suite": SUITE_BLAKE3,
            "kind": "snapshot",
            "subscription": "sub-teacher-papers",
            "sequence": 4,
            "builds_on": None,
            "counts": {"rows_upserted": 60, "rows_deleted": 1},
            "expected_state": {"rows": 60},
        },
        "package_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "data_key": bytes(range(0xC0, 0xE0)),
        "ephemeral": bytes(range(0xE0, 0x100)),
    },
}


@contextmanager
def fixed_randomness(data_key: bytes, ephemeral: bytes) -> Iterator[None]:
    eph = X25519PrivateKey.from_private_bytes(ephemeral)
    with (
        mock.patch.object(AESGCM, "generate_key", return_value=data_key),
        mock.patch.object(X25519PrivateKey, "generate", return_value=eph),
    ):
        yield


def build(name: str, directory: Path) -> Path:
    spec = VECTORS[name]
    path = directory / f"{name}.pkg"
    path.unlink(missing_ok=True)
    with fixed_randomness(spec["data_key"], spec["ephemeral"]):
        writer = PackageWriter(
            path,
            sender=sender(),
            recipient=recipient().public_bundle(),
            created=CREATED,
            expires=EXPIRES,
            package_id=spec["package_id"],
            chunk_size=CHUNK_SIZE,
            **spec["fields"],
        )
    with writer:
        writer.write(spec["plaintext"]())
    return path


def describe(name: str, path: Path) -> dict[str, Any]:
    """Inputs and intermediate values, for validating another implementation step by step."""
    from protocol.package import chunk_ad, chunk_nonce, read_envelope

    spec = VECTORS[name]
    with open(path, "rb") as handle:
        envelope = read_envelope(handle.fileno())
    header = json.loads(envelope.header_raw)
    data = path.read_bytes()
    info = header["payload"]
    full = info["chunk_size"] + 16
    chunks = []
    for index in range(info["chunks"]):
        start = envelope.payload_offset + index * full
        end = min(start + full, envelope.payload_offset + info["ciphertext_bytes"])
        final = index == info["chunks"] - 1
        chunks.append(
            {
                "offset": start,
                "length": end - start,
                "nonce": chunk_nonce(index, final).hex(),
                "associated_data": chunk_ad(header["package_id"], index).hex(),
                "sha256": hashlib.sha256(data[start:end]).hexdigest(),
            }
        )
    return {
        "sender": {
            "party_id": "platform",
            "ed25519_private": SENDER_SIGNING.hex(),
            "x25519_private": SENDER_ENCRYPTION.hex(),
            "bundle": json.loads(sender().public_bundle().to_json()),
        },
        "recipient": {
            "party_id": recipient().party_id,
            "ed25519_private": RECIPIENT_SIGNING.hex(),
            "x25519_private": RECIPIENT_ENCRYPTION.hex(),
            "bundle": json.loads(recipient().public_bundle().to_json()),
        },
        "data_key": spec["data_key"].hex(),
        "ephemeral_x25519_private": spec["ephemeral"].hex(),
        "now_for_checks": "2026-11-02T00:00:00Z",
        "header_sha256": hashlib.sha256(envelope.header_raw).hexdigest(),
        "signature": envelope.signature.hex(),
        "payload_offset": envelope.payload_offset,
        "chunks": chunks,
        "plaintext_sha256": hashlib.sha256(spec["plaintext"]()).hexdigest(),
        "zstd_version": zstandard.ZSTD_VERSION,
    }


def main() -> None:
    for name in VECTORS:
        path = build(name, HERE)
        with open(path, "rb") as handle:
            from protocol.package import read_envelope

            envelope = read_envelope(handle.fileno())
        (HERE / f"{name}.header.json").write_bytes(envelope.header_raw)
        (HERE / f"{name}.plaintext").write_bytes(VECTORS[name]["plaintext"]())
        description = json.dumps(describe(name, path), indent=2, sort_keys=True, ensure_ascii=False)
        (HERE / f"{name}.json").write_text(description + "\n", encoding="utf-8")
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
