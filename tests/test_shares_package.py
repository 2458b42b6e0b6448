"""End to end through the real package format: hub-side build_manifest + PackageWriter,
agent-side open_package (signature, decryption) + ShareStore.apply on the plaintext stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.stores.shares import errors as E
from connectors.stores.shares.fileset import fileset_summary
from connectors.stores.shares.manifest import build_manifest
from connectors.stores.shares.store import ShareStore
from protocol.keys import PartyKeys
from protocol.package import PackageWriter, open_package
from tests.test_shares_support import CATALOG, entries_of, tree

HUB, AGENT = PartyKeys.generate("platform"), PartyKeys.generate("school-1")


def write_files_package(
    out: Path, files: dict[str, bytes], previous: dict[str, bytes] | None, sequence: int
) -> Path:
    manifest = build_manifest(entries_of(files), None if previous is None else entries_of(previous))
    with PackageWriter(
        out,
        kind="files",
        sender=HUB,
        recipient=AGENT.public_bundle(),
        subscription="rsc-courses",
        sequence=sequence,
        builds_on=sequence - 1,
        catalog=CATALOG,
        counts={"files": len(manifest.entries)},
        expected_state=fileset_summary(entries_of(files)),
        manifest=manifest.to_json(),
        chunk_size=64 * 1024,
    ) as writer:
        for entry in manifest.entries:
            writer.write(files[entry.path])
    return out


def apply_package(store: ShareStore, path: Path) -> object:
    with open_package(path, trusted_senders={"platform": HUB.public_bundle()}, recipient=AGENT) as package:
        return store.apply(package.header, package.plaintext(), "courses")


def test_encrypted_files_packages_apply_end_to_end(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    store = ShareStore(share, space_margin=0)
    v1 = {"课程/高一.pdf": b"%PDF" + bytes(range(256)) * 1000, "readme.txt": "说明".encode()}
    v2 = {"课程/高一.pdf": v1["课程/高一.pdf"], "课程/高二.pdf": b"%PDF-2" * 5000}
    result = apply_package(store, write_files_package(tmp_path / "p1", v1, None, 1))
    assert result.match  # type: ignore[attr-defined]
    result = apply_package(store, write_files_package(tmp_path / "p2", v2, v1, 2))
    assert result.match and result.files_removed == 1  # type: ignore[attr-defined]
    assert tree(share / "courses") == v2
    assert store.verify("courses").match


def test_package_of_another_kind_is_refused(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    path = tmp_path / "snap"
    with PackageWriter(
        path,
        kind="snapshot",
        sender=HUB,
        recipient=AGENT.public_bundle(),
        subscription="rsc-courses",
        sequence=1,
    ) as writer:
        writer.write(b'U,"1"\n')
    with (
        open_package(path, trusted_senders={"platform": HUB.public_bundle()}, recipient=AGENT) as package,
        pytest.raises(E.WrongPackageKindError),
    ):
        ShareStore(share).apply(package.header, package.plaintext(), "courses")
    assert list(share.iterdir()) == []
