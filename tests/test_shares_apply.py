"""Applying files packages: round trips, modes, every apply-time rejection, symlink attacks, resume."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.stores.shares import errors as E
from connectors.stores.shares.store import ShareModes, ShareStore
from tests.test_shares_support import files_package, tree

V1 = {"a.txt": b"alpha", "docs/课表.pdf": b"P" * 70_000, "docs/deep/x.bin": bytes(range(256)) * 3}
V2 = {"a.txt": b"alpha v2", "docs/课表.pdf": b"P" * 70_000, "new/n.txt": b"n"}


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    return root


@pytest.fixture
def store(share: Path) -> ShareStore:
    return ShareStore(share, space_margin=0)


def staging_files(share: Path, dirname: str = "sub") -> list[str]:
    staging = share / dirname / ".edu-sync" / "staging"
    return sorted(str(p.relative_to(staging)) for p in staging.rglob("*")) if staging.exists() else []


def applied(
    store: ShareStore, files: dict[str, bytes], previous: dict[str, bytes] | None = None, sequence: int = 1
) -> None:
    header, payload = files_package(files, previous, sequence=sequence)
    result = store.apply(header, [payload], "sub")
    assert result.status == "applied" and result.match


def test_snapshot_then_delta_gives_exactly_the_new_set(store: ShareStore, share: Path) -> None:
    header, payload = files_package(V1, sequence=1)
    result = store.apply(header, [payload], "sub")
    assert (result.files_written, result.match, result.local_digest) == (
        3,
        True,
        header["manifest"]["expected_digest"],
    )
    assert tree(share / "sub") == V1
    header, payload = files_package(V2, V1, sequence=2)
    result = store.apply(header, iter([payload[:3], payload[3:]]), "sub")
    assert (result.files_written, result.files_removed) == (2, 1)
    assert tree(share / "sub") == V2
    assert not (share / "sub" / "docs" / "deep").exists()  # emptied directories are pruned
    position = store.position("sub")
    assert position is not None and position.sequence == 2
    assert position.digest == header["manifest"]["expected_digest"]
    assert store.verify("sub").match
    assert staging_files(share) == []
    assert sorted(os.listdir(share)) == ["sub"]


def test_marker_records_the_catalog_entry(store: ShareStore, share: Path) -> None:
    applied(store, V1)
    import json

    marker = json.loads((share / "sub" / ".edu-sync" / "marker.json").read_text())
    assert marker == {
        "subscription": "sub-files",
        "resource_name": "教务处数据-课程表信息",
        "mounted_resource_name": "课程表信息表",
        "provider": "教务处",
        "sharing_type": "authorised",
        "security_level": "内部",
        "agreement_id": "AGR-2025-001",
        "agreement": None,
    }


def test_already_applied_package_is_skipped(store: ShareStore) -> None:
    header, payload = files_package(V1, sequence=1)
    store.apply(header, [payload], "sub")
    again = store.apply(header, [payload], "sub")
    assert again.status == "already_applied" and again.match


def test_unchanged_files_of_a_snapshot_are_not_rewritten(store: ShareStore, share: Path) -> None:
    applied(store, V1)
    inode = (share / "sub" / "docs" / "课表.pdf").stat().st_ino
    header, payload = files_package({**V1, "b": b"b"}, sequence=5)  # a resync snapshot
    result = store.apply(header, [payload], "sub")
    assert (result.files_written, result.files_unchanged) == (1, 3)
    assert (share / "sub" / "docs" / "课表.pdf").stat().st_ino == inode


def test_modes_and_owner_come_from_local_config(share: Path) -> None:
    store = ShareStore(
        share, ShareModes(file_mode=0o604, dir_mode=0o711), owner=65534, group=65534, space_margin=0
    )
    old = os.umask(0o077)
    try:
        applied(store, V1)
    finally:
        os.umask(old)
    sub = share / "sub"
    for path in [sub / "a.txt", sub / "docs" / "deep" / "x.bin"]:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o604 and (st.st_uid, st.st_gid) == (65534, 65534)
    for path in [sub, sub / "docs", sub / "docs" / "deep"]:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o711 and (st.st_uid, st.st_gid) == (65534, 65534)


def test_default_modes_are_0640_and_0750(store: ShareStore, share: Path) -> None:
    applied(store, V1)
    assert stat.S_IMODE((share / "sub" / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((share / "sub" / "docs").stat().st_mode) == 0o750
    assert stat.S_IMODE((share / "sub" / ".edu-sync" / "staging").stat().st_mode) == 0o700
    assert stat.S_IMODE((share / "sub" / ".edu-sync" / "state.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o4755, 0o2750, 0o1777])
def test_setuid_setgid_and_sticky_modes_are_refused_in_config(mode: int) -> None:
    with pytest.raises(E.InvalidShareConfigError):
        ShareModes(file_mode=mode)
    with pytest.raises(E.InvalidShareConfigError):
        ShareModes(dir_mode=mode)


def test_unknown_owner_is_a_config_error(share: Path) -> None:
    with pytest.raises(E.InvalidShareConfigError):
        ShareStore(share, owner="no-such-user-here")


# ----------------------------------------------------------- rejections leave everything as it was


def _tamper_size(header: dict, payload: bytes) -> tuple[dict, bytes]:
    return header, payload[:-1]


def _extra_bytes(header: dict, payload: bytes) -> tuple[dict, bytes]:
    return header, payload + b"undeclared file content"


def _bad_content(header: dict, payload: bytes) -> tuple[dict, bytes]:
    return header, b"Z" + payload[1:]


def _count_files(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["counts"]["files"] += 1
    return header, payload


def _count_bytes(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["counts"]["plaintext_bytes"] -= 1
    return header, payload


def _wrong_kind(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["kind"] = "delta"
    return header, payload


def _sequence_gap(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["sequence"], header["builds_on"] = 4, 3
    return header, payload


def _removed_unknown(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["manifest"]["removed"].append("never-existed.txt")
    header["manifest"]["file_count"] -= 1
    header["expected_state"]["rows"] -= 1
    return header, payload


def _expected_wrong(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["manifest"]["expected_digest"] = "0" * 64
    header["expected_state"]["digest"] = "0" * 64
    return header, payload


def _collides_with_kept(header: dict, payload: bytes) -> tuple[dict, bytes]:
    entry = dict(header["manifest"]["entries"][-1])
    entry["path"] = "A.TXT"
    header["manifest"]["entries"].append(entry)
    header["manifest"]["file_count"] += 1
    header["expected_state"]["rows"] += 1
    header["counts"]["files"] += 1
    header["counts"]["plaintext_bytes"] += entry["size"]
    return header, payload + payload[-entry["size"] :] if entry["size"] else payload


def _symlink_entry(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["manifest"]["entries"][0]["type"] = "symlink"
    return header, payload


def _traversal(header: dict, payload: bytes) -> tuple[dict, bytes]:
    header["manifest"]["entries"][0]["path"] = "../outside/pwned"
    return header, payload


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (_tamper_size, E.PayloadTooShortError),
        (_extra_bytes, E.PayloadTooLongError),
        (_bad_content, E.FileDigestMismatchError),
        (_count_files, E.CountMismatchError),
        (_count_bytes, E.CountMismatchError),
        (_wrong_kind, E.WrongPackageKindError),
        (_sequence_gap, E.BaseMismatchError),
        (_removed_unknown, E.UnknownRemovedPathError),
        (_expected_wrong, E.ExpectedDigestError),
        (_collides_with_kept, E.NameCollisionError),
        (_symlink_entry, E.UnsupportedEntryTypeError),
        (_traversal, E.ParentTraversalError),
    ],
)
def test_rejected_package_changes_nothing(store: ShareStore, share: Path, tamper, error) -> None:  # type: ignore[no-untyped-def]
    applied(store, V1)
    before, position = tree(share / "sub"), store.position("sub")
    header, payload = tamper(*files_package(V2, V1, sequence=2))
    with pytest.raises(error) as info:
        store.apply(header, [payload], "sub")
    assert isinstance(info.value, E.PackageRejected)
    assert tree(share / "sub") == before
    assert store.position("sub") == position
    assert staging_files(share) == []
    assert os.listdir(share.parent / "outside") == []
    applied(store, V2, V1, sequence=2)  # the untampered package still applies


def test_payload_longer_than_declared_even_by_one_byte(store: ShareStore, share: Path) -> None:
    header, payload = files_package(V1, sequence=1)
    with pytest.raises(E.PayloadTooLongError):
        store.apply(header, [payload, b"\0"], "sub")
    assert tree(share / "sub") == {}


# ----------------------------------------------------------- the destination is not trusted either


def test_planted_symlink_to_outside_directory_is_never_followed(store: ShareStore, share: Path) -> None:
    outside = share.parent / "outside"
    applied(store, V1)
    (share / "sub" / "new").symlink_to(outside, target_is_directory=True)
    before = tree(share / "sub")
    header, payload = files_package(V2, V1, sequence=2)  # writes new/n.txt
    with pytest.raises(E.UnsafeDestinationError) as info:
        store.apply(header, [payload], "sub")
    assert "new" in str(info.value) and "symlink" in str(info.value)
    assert os.listdir(outside) == []
    assert tree(share / "sub") == before and store.position("sub").sequence == 1  # type: ignore[union-attr]


def test_symlinked_parent_of_a_removed_file_is_not_followed(store: ShareStore, share: Path) -> None:
    outside = share.parent / "outside"
    (outside / "x.bin").write_bytes(b"precious")
    applied(store, V1)
    deep = share / "sub" / "docs" / "deep"
    for child in deep.iterdir():
        child.unlink()
    deep.rmdir()
    deep.symlink_to(outside, target_is_directory=True)  # docs/deep/x.bin is removed by V2
    header, payload = files_package(V2, V1, sequence=2)
    with pytest.raises(E.UnsafeDestinationError):
        store.apply(header, [payload], "sub")
    assert (outside / "x.bin").read_bytes() == b"precious"


def test_symlink_at_a_final_name_is_refused(store: ShareStore, share: Path) -> None:
    outside = share.parent / "outside"
    applied(store, V1)
    (share / "sub" / "a.txt").unlink()
    (share / "sub" / "a.txt").symlink_to(outside / "target")
    header, payload = files_package(V2, V1, sequence=2)
    with pytest.raises(E.UnsafeDestinationError):
        store.apply(header, [payload], "sub")
    assert os.listdir(outside) == []


def test_symlink_swapped_in_after_the_checks_is_still_not_followed(
    store: ShareStore, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A race between preflight and rename: the rename path opens parents with O_NOFOLLOW."""
    outside = share.parent / "outside"
    applied(store, V1)
    original = ShareStore._stage

    def stage_then_plant(self, *args):  # type: ignore[no-untyped-def]
        result = original(self, *args)
        (share / "sub" / "new").symlink_to(outside, target_is_directory=True)
        return result

    monkeypatch.setattr(ShareStore, "_stage", stage_then_plant)
    header, payload = files_package(V2, V1, sequence=2)
    with pytest.raises(E.UnsafeDestinationError):
        store.apply(header, [payload], "sub")
    assert os.listdir(outside) == []
    # The committed package waits in the journal; once the link is gone, recovery finishes it.
    (share / "sub" / "new").unlink()
    monkeypatch.undo()
    assert [o.action for o in store.recover("sub")] == ["rolled_forward"]
    assert tree(share / "sub") == V2


def test_symlinked_subscription_directory_is_refused(store: ShareStore, share: Path) -> None:
    (share / "sub").symlink_to(share.parent / "outside", target_is_directory=True)
    header, payload = files_package(V1, sequence=1)
    with pytest.raises(E.UnsafeDestinationError):
        store.apply(header, [payload], "sub")
    assert os.listdir(share.parent / "outside") == []


def test_foreign_directory_is_not_taken_over(store: ShareStore, share: Path) -> None:
    (share / "sub").mkdir()
    (share / "sub" / "someone-elses.doc").write_bytes(b"mine")
    header, payload = files_package(V1, sequence=1)
    with pytest.raises(E.ForeignDirectoryError):
        store.apply(header, [payload], "sub")
    assert tree(share / "sub") == {"someone-elses.doc": b"mine"}


def test_directory_of_another_subscription_is_refused(store: ShareStore, share: Path) -> None:
    applied(store, V1)
    header, payload = files_package(V1, sequence=1, subscription="other-sub")
    with pytest.raises(E.ForeignDirectoryError):
        store.apply(header, [payload], "sub")


def test_nothing_outside_the_subscription_directory_changes(store: ShareStore, share: Path) -> None:
    (share / "neighbour").mkdir()
    (share / "neighbour" / "f").write_bytes(b"n")
    snapshot = {
        p: p.stat().st_mtime_ns
        for p in share.parent.rglob("*")
        if "sub" not in p.relative_to(share.parent).parts
    }
    applied(store, V1)
    applied(store, V2, V1, sequence=2)
    store.purge("sub")
    after = {p: p.stat().st_mtime_ns for p in share.parent.rglob("*")}
    for path, mtime in snapshot.items():
        if path != share:
            assert after[path] == mtime, path


# ----------------------------------------------------------- resume and base mismatch


class Interrupted(Exception):
    pass


def _cut_after(payload: bytes, nbytes: int) -> Iterator[bytes]:
    yield payload[:nbytes]
    raise Interrupted("connection lost")


def test_interrupted_apply_resumes_without_rewriting_verified_files(store: ShareStore, share: Path) -> None:
    files = {f"f{i:02d}.bin": hashlib.sha256(bytes([i])).digest() * 1000 for i in range(10)}
    header, payload = files_package(files, sequence=1)
    with pytest.raises(Interrupted):
        store.apply(header, _cut_after(payload, 32_000 * 6 + 100), "sub")
    assert tree(share / "sub") == {}
    staged = [p for p in (share / "sub" / ".edu-sync" / "staging").rglob("*") if p.is_file()]
    complete = {p.name: p.stat().st_ino for p in staged if p.stat().st_size == 32_000}
    assert len(complete) == 6 and len(staged) == 7  # the seventh was cut after 100 bytes
    assert [o.action for o in store.recover()] == ["staging_kept"]
    result = store.apply(header, [payload], "sub")
    assert (result.files_resumed, result.files_written) == (6, 4)
    assert tree(share / "sub") == files
    final_inodes = {(share / "sub" / p).stat().st_ino for p in files}
    assert set(complete.values()) <= final_inodes  # renamed into place, not rewritten


def test_corrupted_staged_file_is_rewritten_on_resume(store: ShareStore, share: Path) -> None:
    files = {f"f{i}": bytes([i]) * 5000 for i in range(4)}
    header, payload = files_package(files, sequence=1)
    with pytest.raises(Interrupted):
        store.apply(header, _cut_after(payload, 5000 * 3), "sub")
    staged = sorted(p for p in (share / "sub" / ".edu-sync" / "staging").rglob("*") if p.is_file())
    staged[0].write_bytes(b"rotten")
    result = store.apply(header, [payload], "sub")
    assert result.files_resumed == 2 and tree(share / "sub") == files


def test_different_package_discards_old_staging(store: ShareStore, share: Path) -> None:
    header, payload = files_package(V1, sequence=1)
    with pytest.raises(Interrupted):
        store.apply(header, _cut_after(payload, 10), "sub")
    header2, payload2 = files_package(V2, sequence=1)
    store.apply(header2, [payload2], "sub")
    assert tree(share / "sub") == V2 and staging_files(share) == []


def test_delta_on_a_diverged_base_applies_and_names_mismatched_files(store: ShareStore, share: Path) -> None:
    applied(store, V1)
    platform_thinks = {**V1, "ghost.txt": b"the agent never got this"}
    header, payload = files_package({**platform_thinks, "a.txt": b"changed"}, platform_thinks, sequence=2)
    result = store.apply(header, [payload], "sub")
    assert result.status == "applied" and not result.match
    assert result.mismatched_buckets
    assert tree(share / "sub") == {**V1, "a.txt": b"changed"}
    assert "ghost.txt" not in result.mismatched_files  # we do not have it; its bucket is named
    from protocol.digest import bucket_of, file_item

    assert bucket_of(file_item("ghost.txt", 0, "")[0]) in result.mismatched_buckets


def test_empty_files_and_empty_packages(store: ShareStore, share: Path) -> None:
    applied(store, {"empty": b""})
    applied(store, {}, {"empty": b""}, sequence=2)
    assert tree(share / "sub") == {}
    assert store.verify("sub").match


def test_recover_skips_directories_that_are_not_subscriptions(store: ShareStore, share: Path) -> None:
    applied(store, V1)
    (share / ".snapshot").mkdir()
    (share / "bad\u202ename").mkdir()
    (share / "someone").mkdir()
    (share / "someone" / "f").write_bytes(b"x")
    assert [(o.dirname, o.action) for o in store.recover()] == [("sub", "clean")]


def test_position_of_an_empty_precreated_directory_is_none(store: ShareStore, share: Path) -> None:
    (share / "sub").mkdir()
    assert store.position("sub") is None
    applied(store, V1)
    assert store.position("sub") is not None


# ----------------------------------------------------------- property: any sequence of sets


_NAMES = st.sampled_from(["a", "b", "c.txt", "d/e", "d/f", "g/h/i", "课程/表", "Z"])
_FILE_SETS = st.dictionaries(_NAMES, st.binary(max_size=300), max_size=6).filter(
    lambda files: not any(p != q and q.startswith(p + "/") for p in files for q in files)
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_FILE_SETS, st.booleans()), min_size=1, max_size=4))
def test_any_sequence_of_snapshots_and_deltas_ends_in_the_last_set(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[dict[str, bytes], bool]]
) -> None:
    share = tmp_path_factory.mktemp("prop")
    store = ShareStore(share, space_margin=0)
    previous: dict[str, bytes] | None = None
    for sequence, (files, as_snapshot) in enumerate(steps, start=1):
        header, payload = files_package(files, None if as_snapshot else previous, sequence=sequence)
        result = store.apply(header, [payload], "sub")
        assert result.match
        assert tree(share / "sub") == files
        previous = files
    assert store.verify("sub").match


@pytest.mark.parametrize("dirname", ["../escape", "a/b", ".hidden", "", "C:x", "nul"])
def test_bad_subscription_directory_name_is_a_config_error_not_a_bad_package(
    store: ShareStore, share: Path, dirname: str
) -> None:
    header, payload = files_package(V1, sequence=1)
    with pytest.raises(E.InvalidShareConfigError):
        store.apply(header, [payload], dirname)
    assert os.listdir(share) == [] and os.listdir(share.parent / "outside") == []


def test_a_large_file_streams_with_bounded_memory(store: ShareStore, share: Path) -> None:
    """128 MiB from a lazy chunk generator: the applying process grows by far less than that."""
    size, block = 128 << 20, bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)
    header, _ = files_package({"big.bin": b""}, sequence=1)
    entry = {"path": "big.bin", "type": "file", "size": size, "sha256": digest.hexdigest()}
    from connectors.stores.shares.fileset import fileset_digest, fileset_summary
    from connectors.stores.shares.manifest import ManifestEntry

    item = ManifestEntry("big.bin", size, digest.hexdigest())
    header["manifest"].update(entries=[entry], expected_digest=fileset_digest([item]))
    header["expected_state"] = fileset_summary([item])
    header["counts"] = {"files": 1, "plaintext_bytes": size}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import resource

            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            store.apply(header, (block for _ in range(size // len(block))), "sub")
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            os.write(write_end, str(grown).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    grown_kib = int(os.read(read_end, 64) or b"-1")
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (share / "sub" / "big.bin").stat().st_size == size
    assert 0 <= grown_kib < 40 * 1024, f"peak RSS grew by {grown_kib} KiB"


@pytest.mark.parametrize("previous", [None, {f"old/{i}": b"o" for i in range(50)} | {"k": b"keep"}])
def test_a_large_change_split_into_a_chain_of_packages_applies_link_by_link(
    store: ShareStore, share: Path, previous: dict[str, bytes] | None
) -> None:
    import json as _json

    from connectors.stores.shares.fileset import fileset_summary
    from connectors.stores.shares.manifest import build_manifest, split_manifest, validate_manifest
    from tests.test_shares_support import entries_of

    sequence = 0
    if previous is not None:
        applied(store, previous)
        sequence = 1
    files = {f"new/{i:04d}.txt": f"n{i}".encode() for i in range(400)} | {"k": b"keep"}
    whole = build_manifest(entries_of(files), None if previous is None else entries_of(previous))
    links = split_manifest(whole, None if previous is None else entries_of(previous), max_bytes=8000)
    assert len(links) > 3 and sum(len(m.entries) for m in links) == len(whole.entries)
    for link in links:
        assert len(_json.dumps(link.to_json())) <= 8000
        assert validate_manifest(link.to_json()) == link
        sequence += 1
        payload = b"".join(files[e.path] for e in link.entries)
        header = {
            "kind": "files",
            "package_id": os.urandom(16).hex(),
            "subscription": "sub-files",
            "sequence": sequence,
            "builds_on": sequence - 1,
            "catalog": {},
            "counts": {"files": len(link.entries), "plaintext_bytes": len(payload)},
            "manifest": link.to_json(),
        }
        assert store.apply(header, [payload], "sub").match
    assert tree(share / "sub") == files
    assert links[-1].expected_digest == whole.expected_digest
    assert store.position("sub").digest == fileset_summary(entries_of(files))["digest"]  # type: ignore[union-attr]


@pytest.mark.parametrize("prefetch", [False, True])
def test_entry_reader_cuts_and_hashes_entries_and_forwards_errors(prefetch: bool) -> None:
    from connectors.stores.shares.stream import EntryReader

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    sizes = [("a", 2), ("empty", 0), ("b", 4), ("c", 2)]
    with EntryReader(iter([b"abc", b"", b"defgh"]), sizes, prefetch=prefetch) as reader:
        got = [(b"".join(reader.blocks()), reader.digest) for _ in range(3)]
        assert got == [(b"ab", sha(b"ab")), (b"", sha(b"")), (b"cdef", sha(b"cdef"))]
        assert reader.skip() == sha(b"gh")
        reader.finish()

    with EntryReader(iter([b"abc", b"defg"]), sizes, prefetch=prefetch) as reader:
        assert [bytes(b) for b in reader.blocks()] == [b"ab"]
        reader.skip()
        reader.skip()
        with pytest.raises(E.PayloadTooShortError, match="1 bytes into 'c'"):
            reader.skip()

    with EntryReader(iter([b"abcdefghX"]), sizes, prefetch=prefetch) as reader:
        for _ in sizes:
            reader.skip()
        with pytest.raises(E.PayloadTooLongError, match="after the 4 declared entries"):
            reader.finish()

    def broken() -> Iterator[bytes]:
        yield b"x" * 10
        raise Interrupted("chunk failed authentication")

    with EntryReader(broken(), [("x", 10), ("y", 1)], prefetch=prefetch) as reader:
        assert reader.skip() == sha(b"x" * 10)
        with pytest.raises(Interrupted):
            reader.skip()

    endless = (b"y" * 1024 for _ in iter(int, 1))
    with EntryReader(endless, [("y", 1 << 40)], prefetch=prefetch) as reader:  # closing stops the producer
        assert len(next(reader.blocks())) == 1024


def test_writeback_is_started_over_each_staged_file_and_the_barrier_still_follows(
    share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_writeback`` covers every byte once, in order; the fsync/syncfs barrier is still made."""
    from connectors.stores.shares import fsops
    from connectors.stores.shares import store as store_module

    calls: list[tuple[str, int, int]] = []
    real = fsops.start_writeback

    def recording(fd: int, offset: int = 0, length: int = 0) -> None:
        calls.append(("writeback", offset, length))
        real(fd, offset, length)

    real_syncfs, real_fsync = fsops.syncfs, os.fsync

    def syncfs(fd: int) -> None:
        calls.append(("syncfs", 0, 0))
        real_syncfs(fd)

    def fsync(fd: int) -> None:
        calls.append(("fsync", 0, 0))
        real_fsync(fd)

    monkeypatch.setattr(fsops, "start_writeback", recording)
    monkeypatch.setattr(fsops, "syncfs", syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    step = store_module.WRITEBACK_STEP
    big = os.urandom(1024) * (2 * step // 1024 + 1)  # two full steps and a 1 KiB tail

    # Few files: each gets an fsync, so only the periodic ranges are started before it.
    header, payload = files_package({"big.bin": big}, sequence=1)
    assert ShareStore(share, space_margin=0).apply(header, [payload], "sub").match
    started = [c for c in calls if c[0] == "writeback"]
    assert started == [("writeback", 0, step), ("writeback", step, step)]
    assert ("fsync", 0, 0) in calls[calls.index(started[-1]) :]

    # One syncfs for all files: every file's tail is handed to writeback, then the barrier.
    calls.clear()
    files = {"big.bin": big, "s1.txt": b"one", "s2.txt": b"two" * 1000}
    header, payload = files_package(files, {"big.bin": big}, sequence=2)
    assert ShareStore(share, space_margin=0, durability="syncfs").apply(header, [payload], "sub").match
    started = [c for c in calls if c[0] == "writeback"]
    assert sorted(started) == sorted([("writeback", 0, 3), ("writeback", 0, 3000)])
    assert calls.index(("syncfs", 0, 0)) > max(calls.index(c) for c in started)
    assert tree(share / "sub") == files


def test_flusher_starts_ranges_in_order_and_closes_every_handed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.stores.shares import fsops

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(
        fsops, "start_writeback", lambda fd, offset=0, length=0: calls.append((fd, offset, length))
    )
    fds = [os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600) for i in range(11)]
    with fsops.Flusher(batch=4) as flusher:
        flusher.start(fds[0], 0, 100)
        flusher.done(fds[0], 100, 5)
        for fd in fds[1:]:
            flusher.done(fd)  # no range: closed only
    assert calls == [(fds[0], 0, 100), (fds[0], 100, 5)]
    for fd in fds:  # all closed once the with block is left, the partial last batch included
        with pytest.raises(OSError):
            os.fstat(fd)

    fd = os.open(tmp_path / "f0", os.O_RDONLY)
    os.close(fd)  # a descriptor that is already closed: the flusher's close fails and says so
    with pytest.raises(OSError), fsops.Flusher() as flusher:
        flusher.done(fd)


def test_flusher_drops_written_data_behind_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file's ranges are dropped once ``behind`` newer ones are under writeback, the rest
    when it is done; small files whole, ``small_behind`` files later or at the end."""
    from connectors.stores.shares import fsops

    calls: list[tuple[str, int, int, int]] = []
    monkeypatch.setattr(
        fsops, "start_writeback", lambda fd, offset=0, length=0: calls.append(("start", fd, offset, length))
    )
    monkeypatch.setattr(
        fsops, "drop_written", lambda fd, offset, length: calls.append(("drop", fd, offset, length))
    )
    big, *small = (os.open(tmp_path / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o600) for i in range(5))
    with fsops.Flusher(behind=2, small_behind=2) as flusher:
        for i in range(4):
            flusher.start(big, 10 * i, 10)
        flusher.done(big, 40, 5)
        for fd in small:
            flusher.done(fd, 0, 7)
    started = {(fd, o, n): ("start", fd, o, n) for _, fd, o, n in calls}
    dropped = {fd: ("drop", fd, 0, 0) for _, fd, _, _ in calls}  # a whole file
    assert calls == [
        started[big, 0, 10], started[big, 10, 10], started[big, 20, 10],
        ("drop", big, 0, 10),
        started[big, 30, 10], ("drop", big, 10, 10),
        started[big, 40, 5], dropped[big],
        started[small[0], 0, 7], started[small[1], 0, 7], started[small[2], 0, 7],
        dropped[small[0]],
        started[small[3], 0, 7], dropped[small[1]],
        dropped[small[2]], dropped[small[3]],
    ]  # fmt: skip
    for fd in (big, *small):
        with pytest.raises(OSError):
            os.fstat(fd)


def _page_cached(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT) > 0
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_staged_files_leave_the_page_cache(share: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an apply, neither a file written in ranges nor small files stay in the page cache."""
    from connectors.stores.shares import store as store_module

    probe = share / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"p" * 8192)
        os.fsync(fd)  # clean pages: only those can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        if _page_cached(probe):
            pytest.skip("this filesystem keeps pages that were asked to be dropped (tmpfs?)")
    except OSError as exc:
        pytest.skip(f"no RWF_NOWAIT reads here: {exc}")
    probe.unlink()
    monkeypatch.setattr(store_module, "WRITEBACK_STEP", 64 << 10)
    big = os.urandom(700 << 10)
    files = {"big.bin": big, **{f"s/{i}.txt": os.urandom(5000) for i in range(40)}}
    for durability in ("fsync", "syncfs"):
        header, payload = files_package(files, sequence=1)
        name = f"sub-{durability}"
        assert ShareStore(share, space_margin=0, durability=durability).apply(header, [payload], name).match
        staged = [p for p in (share / name).rglob("*") if p.is_file() and ".edu-sync" not in str(p)]
        cached = [p for p in staged if _page_cached(p)]
        # Without the drop all 41 stay cached. A page can escape a drop now and then on a busy
        # machine (the kernel does not invalidate a page another CPU still holds in its LRU
        # batch), which was seen once in a full CI run: a few such files are tolerated.
        assert len(cached) <= 2, (durability, cached)
        assert tree(share / name) == files


def test_a_write_error_seen_while_dropping_rejects_the_apply(
    store: ShareStore, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for writeback consumes a write error the fsync would have reported: the apply still fails."""
    import errno

    from connectors.stores.shares import fsops
    from connectors.stores.shares import store as store_module

    def failing(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "injected write error")

    monkeypatch.setattr(store_module, "WRITEBACK_STEP", 64 << 10)
    monkeypatch.setattr(fsops, "drop_written", failing)
    files = {"big.bin": os.urandom(400 << 10)}
    header, payload = files_package(files, sequence=1)
    with pytest.raises(OSError, match="injected write error"):
        store.apply(header, [payload], "sub")
    assert store.position("sub") is None
    assert tree(share / "sub") == {}
    monkeypatch.undo()
    assert store.apply(header, [payload], "sub").match  # a retry re-hashes what was staged
    assert tree(share / "sub") == files
