"""Package format v1: round trips, header fields, atomic writes, reader API."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import blake3
import pytest

from protocol.errors import (
    ExpiredError,
    FormatError,
    InvalidFieldError,
    PackageError,
    UnknownSenderError,
    WrongRecipientError,
)
from protocol.header import MAX_MANIFEST_BYTES, canonical_json
from protocol.layout import is_temp_name, parse_package_name
from protocol.package import (
    DEFAULT_SUITE,
    MAGIC,
    SUITE_BLAKE3,
    SUITE_V1,
    PackageWriter,
    open_package,
    read_header,
)
from tests.vectors.helpers import (
    AGENT,
    NOW,
    OTHER_AGENT,
    PLATFORM,
    TRUSTED,
    incompressible,
    read_all,
    write_package,
)

CATALOG = {
    "resource_name": "人事处数据-教职工科技论文信息",
    "mounted_resource_name": "教职工科技论文信息表",
    "summary": "教职工发表的科技论文",
    "sharing_type": "有条件共享",
    "security_level": "2",
    "update_frequency": "每天",
    "provision_method": "库表",
    "time_range": "1998至今",
    "topic": "教师主题库",
    "scope": "高校",
    "agreement_id": "AG-2026-001",
}
SCHEMA = [
    {
        "label": "更新时间",
        "name": "UPDATETIME",
        "meaning": "last update time of the row",
        "type": "VARCHAR2(50)",
        "not_null": True,
        "primary_key": True,
        "format": "YYYY-MM-DD HH:MM:SS",
        "example": "2015-12-10 13:15:36",
    }
]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"x",
        incompressible(1024),  # compressed stream spans a chunk boundary exactly or nearly
        incompressible(5000),
        "学生,教职工\n".encode() * 5000,
    ],
    ids=["empty", "one-byte", "about-one-chunk", "several-chunks", "chinese-csv"],
)
def test_round_trip(tmp_path: Path, payload: bytes) -> None:
    path = write_package(tmp_path, payload)
    assert read_all(path) == payload


def test_exact_multiple_of_chunk_size(tmp_path: Path) -> None:
    # Find a payload whose compressed size is an exact multiple of the chunk size, so
    # the final chunk is a full one: the last-chunk flag must still mark it.
    for size in range(2000, 6000):
        path = write_package(tmp_path, incompressible(size), sequence=size)
        header = read_header(path, trusted_senders=TRUSTED, now=NOW)
        if header.payload.ciphertext_bytes == header.payload.chunks * (1024 + 16):
            assert read_all(path) == incompressible(size)
            return
        path.unlink()
    pytest.fail("no payload size produced an exact chunk multiple")


def test_header_carries_all_fields(tmp_path: Path) -> None:
    path = write_package(
        tmp_path,
        b"U,1\n",
        kind="delta",
        sequence=7,
        builds_on=6,
        catalog=CATALOG,
        schema=SCHEMA,
        counts={"rows_upserted": 1, "rows_deleted": 0},
        expected_state={"digest": "ab" * 32, "rows": 10},
        manifest={"note": "kind-specific"},
    )
    header = read_header(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW)
    assert (header.kind, header.sequence, header.builds_on, header.subscription) == ("delta", 7, 6, "sub-1")
    assert (header.sender, header.recipient) == ("platform", "school-1")
    assert header.recipient_key_id == AGENT.public_bundle().encryption_key_id
    assert header.catalog == CATALOG
    assert header.schema == SCHEMA
    assert header.counts == {"rows_upserted": 1, "rows_deleted": 0, "plaintext_bytes": 4}
    assert header.expected_state == {"digest": "ab" * 32, "rows": 10}
    assert header.manifest == {"note": "kind-specific"}
    assert header.expires == NOW + timedelta(days=1)
    assert parse_package_name(path.name).package_id == header.package_id
    # the header is canonical JSON, byte for byte
    assert canonical_json(header.to_dict()) == header.raw


@pytest.mark.parametrize(
    ("suite", "algorithm"),
    [(None, blake3.blake3), (SUITE_BLAKE3, blake3.blake3), (SUITE_V1, hashlib.sha256)],
    ids=["default", "blake3", "v1"],
)
def test_suite_names_the_payload_digest(
    tmp_path: Path, suite: str | None, algorithm: Callable[[bytes], Any]
) -> None:
    """Writers default to the BLAKE3 suite and still write v1 on request; readers take both."""
    payload = incompressible(5000)
    fields: dict[str, Any] = {} if suite is None else {"suite": suite}
    path = write_package(tmp_path, payload, **fields)
    header = read_header(path, trusted_senders=TRUSTED, now=NOW)
    assert header.suite == (suite or DEFAULT_SUITE) and DEFAULT_SUITE == SUITE_BLAKE3
    stored = path.read_bytes()[-header.payload.ciphertext_bytes :]
    assert header.payload.digest == algorithm(stored).hexdigest()
    assert read_all(path) == payload


def test_counts_state_and_manifest_can_be_set_after_streaming(tmp_path: Path) -> None:
    path = tmp_path / "p.pkg"
    with PackageWriter(
        path, kind="files", sender=PLATFORM, recipient=AGENT.public_bundle(), subscription="s", sequence=1
    ) as writer:
        writer.write(b"file bytes")
        writer.set_counts({"files": 1})
        writer.set_expected_state({"digest": "00" * 32})
        writer.set_manifest({"files": [{"path": "a.txt", "size": 10}]})
    header = read_header(path, trusted_senders=TRUSTED, recipient=AGENT)
    assert header.counts == {"files": 1, "plaintext_bytes": 10}
    assert header.expected_state == {"digest": "00" * 32}
    assert header.manifest == {"files": [{"path": "a.txt", "size": 10}]}


def test_plaintext_file_object_reads_exact_sizes(tmp_path: Path) -> None:
    payload = incompressible(10_000)
    path = write_package(tmp_path, payload)
    with open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
        stream = package.plaintext()
        assert stream.read(3) == payload[:3]
        assert stream.read(4000) == payload[3:4003]
        assert stream.read() == payload[4003:]
        assert stream.read() == b""
        # plaintext can be streamed again (e.g. verify, then apply)
        assert b"".join(package.iter_plaintext(333)) == payload
        assert package.verify_chunks() == len(payload)


def test_file_is_published_atomically_with_no_temp_files_left(tmp_path: Path) -> None:
    path = write_package(tmp_path, incompressible(50_000))
    assert sorted(os.listdir(tmp_path)) == [path.name]
    assert path.read_bytes().startswith(MAGIC)


def test_exception_inside_writer_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "p.pkg"
    with (
        pytest.raises(RuntimeError),
        PackageWriter(
            path,
            kind="snapshot",
            sender=PLATFORM,
            recipient=AGENT.public_bundle(),
            subscription="s",
            sequence=1,
        ) as writer,
    ):
        writer.write(incompressible(10_000))
        raise RuntimeError("source database went away")
    assert os.listdir(tmp_path) == []


def test_temp_files_use_the_layout_temp_convention(tmp_path: Path) -> None:
    writer = PackageWriter(
        tmp_path / "s.000000000001.0123456789abcdef0123456789abcdef.pkg",
        kind="snapshot",
        sender=PLATFORM,
        recipient=AGENT.public_bundle(),
        subscription="s",
        sequence=1,
    )
    writer.write(b"partial")
    names = os.listdir(tmp_path)
    assert names and all(is_temp_name(n) for n in names)
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_writer_never_overwrites(tmp_path: Path) -> None:
    path = write_package(tmp_path, b"first")
    header = read_header(path, trusted_senders=TRUSTED, now=NOW)
    with pytest.raises(PackageError, match="already exists"):
        write_package(tmp_path, b"second", package_id=header.package_id)
    assert read_all(path) == b"first"
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "bogus"}, "kind 'bogus'"),
        ({"subscription": "../x"}, "invalid subscription id"),
        ({"sequence": -1}, "invalid sequence"),
        ({"sequence": 3, "builds_on": 3}, "builds_on 3 must be below"),
        ({"counts": {"plaintext_bytes": 1}}, "computed by the writer"),
        ({"counts": {"rows": -1}}, "non-negative"),
        ({"catalog": {"ratio": 0.5}}, "float is not allowed"),
        ({"expected_state": ["not", "an", "object"]}, "must be a JSON object"),
        ({"manifest": {"blob": "x" * MAX_MANIFEST_BYTES}}, "the cap is"),
        ({"expires": NOW - timedelta(days=3)}, "is not after created"),
        ({"chunk_size": 16}, "chunk_size 16"),
        ({"package_id": "not-hex"}, "invalid package id"),
        ({"suite": "sm2-sm4gcm-sm3-zstd"}, "suite 'sm2-sm4gcm-sm3-zstd' is not one of"),
    ],
)
def test_writer_rejects_bad_fields_before_streaming(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "kind": "snapshot",
        "sender": PLATFORM,
        "recipient": AGENT.public_bundle(),
        "subscription": "s",
        "sequence": 1,
        "created": NOW,
    }
    args.update(fields)
    with pytest.raises(InvalidFieldError, match=message):
        PackageWriter(tmp_path / "p.pkg", **args)  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_read_header_checks_without_decrypting(tmp_path: Path) -> None:
    path = write_package(tmp_path, b"payload")
    header = read_header(path, trusted_senders=TRUSTED, recipient=AGENT.public_bundle(), now=NOW)
    assert header.kind == "snapshot"
    with pytest.raises(WrongRecipientError, match="not to 'school-2'"):
        read_header(path, trusted_senders=TRUSTED, recipient=OTHER_AGENT, now=NOW)
    with pytest.raises(ExpiredError, match="expired at") as caught:
        read_header(path, trusted_senders=TRUSTED, now=NOW + timedelta(days=2))
    assert caught.value.header is not None and caught.value.header.sequence == 1
    assert read_header(path, trusted_senders=TRUSTED, now=NOW + timedelta(days=2), check_expiry=False)
    with pytest.raises(UnknownSenderError, match="not a pinned sender key"):
        read_header(path, trusted_senders={"school-2": OTHER_AGENT.public_bundle()}, now=NOW)


def test_fifo_and_directory_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "s.000000000001.0123456789abcdef0123456789abcdef.pkg"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(FormatError, match="not a regular file"):
            open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW)
        with pytest.raises(FormatError, match="not a regular file"):
            read_header(path, trusted_senders=TRUSTED, now=NOW)


def test_schema_must_be_a_list_of_objects(tmp_path: Path) -> None:
    with pytest.raises(InvalidFieldError, match="list of column objects"):
        PackageWriter(
            tmp_path / "p.pkg",
            kind="snapshot",
            sender=PLATFORM,
            recipient=AGENT.public_bundle(),
            subscription="s",
            sequence=1,
            schema=["ID"],  # type: ignore[list-item]
        )


def test_plaintext_feeds_the_csv_module(tmp_path: Path) -> None:
    """The tables store parses CSV straight from the file object, without a copy in memory."""
    import csv
    import io

    rows = [["U", "1", "张三", ""], ["D", "2", "", ""]]
    text = 'U,"1","张三",""\nD,"2",,\n'
    path = write_package(tmp_path, text.encode())
    with open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
        reader = csv.reader(io.TextIOWrapper(package.plaintext(), encoding="utf-8", newline=""))
        assert list(reader) == rows


def test_payload_digest_reads_ahead_over_many_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest pass cycles its few buffers many times: a good package opens, a flipped byte
    in any block is caught, and a file that shrinks under the pass fails without a thread left."""
    import threading

    from protocol import package as package_module
    from protocol.errors import PayloadDigestError, TruncatedError

    monkeypatch.setattr(package_module, "_DIGEST_BLOCK", 1000)  # blocks across chunk boundaries
    payload = incompressible(50_000)
    path = write_package(tmp_path, payload)
    assert read_all(path) == payload
    data = path.read_bytes()
    for offset in (len(data) - 50_000, len(data) - 25_000, len(data) - 1):
        tampered = tmp_path / f"flipped-{offset}.pkg"
        tampered.write_bytes(data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :])
        with pytest.raises(PayloadDigestError):
            read_all(tampered)

    with open(path, "rb") as handle:
        fd = handle.fileno()
        envelope = package_module.read_envelope(fd)
        header = read_header(path, trusted_senders=TRUSTED, now=NOW)
        os.truncate(path, len(data) - 20_000)
        with pytest.raises(TruncatedError, match="shrank"):
            package_module.check_payload(fd, envelope, header)
    assert not [t for t in threading.enumerate() if t.name == "payload-digest"]
