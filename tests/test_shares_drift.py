"""Drift detection and repair, verify, the drift watcher's modes, and revocation (purge)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from connectors.stores.shares import errors as E
from connectors.stores.shares.store import DriftItem, ShareStore
from connectors.stores.shares.watch import DriftReport, DriftWatcher, filesystem_type, is_network_fs
from tests.test_shares_support import files_package, tree

FILES = {"a.txt": b"alpha", "docs/b.pdf": b"B" * 5000, "docs/c/d.txt": b"delta"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def share(tmp_path: Path) -> Path:
    (tmp_path / "share").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "share"


def _store(share: Path, cache: Path | None = None) -> ShareStore:
    store = ShareStore(share, cache_dir=cache, space_margin=0)
    header, payload = files_package(FILES, sequence=1)
    store.apply(header, [payload], "sub")
    return store


def _drift_locally(share: Path) -> None:
    sub = share / "sub"
    (sub / "a.txt").write_bytes(b"edited by hand")
    (sub / "docs" / "c" / "d.txt").unlink()
    (sub / "stray.tmp").write_bytes(b"stray")


EXPECTED_DRIFT = [
    DriftItem("a.txt", "changed", sha(b"alpha"), sha(b"edited by hand")),
    DriftItem("stray.tmp", "added", None, sha(b"stray")),
    DriftItem("docs/c/d.txt", "missing", sha(b"delta"), None),
]


def test_verify_names_every_changed_added_and_missing_file(share: Path) -> None:
    store = _store(share)
    assert store.verify("sub").match
    _drift_locally(share)
    result = store.verify("sub")
    assert not result.match
    assert sorted(result.drift, key=lambda d: d.path) == sorted(EXPECTED_DRIFT, key=lambda d: d.path)
    assert result.local_digest != result.position.digest  # type: ignore[union-attr]


def test_quick_check_sees_the_same_drift(share: Path) -> None:
    store = _store(share)
    assert store.check("sub").drift == []
    _drift_locally(share)
    assert sorted(store.check("sub").drift, key=lambda d: d.path) == sorted(
        EXPECTED_DRIFT, key=lambda d: d.path
    )


def test_same_size_edit_with_restored_mtime_is_caught_by_full_verify(share: Path) -> None:
    store = _store(share)
    target = share / "sub" / "a.txt"
    st = target.stat()
    with open(target, "r+b") as fh:
        fh.write(b"ALPHA")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [d.path for d in store.verify("sub").drift] == ["a.txt"]


def test_symlink_planted_in_the_share_is_reported_not_followed(share: Path) -> None:
    store = _store(share)
    (share / "sub" / "link").symlink_to(share.parent / "outside", target_is_directory=True)
    drift = store.verify("sub").drift
    assert drift == [DriftItem("link", "added", None, "a symlink")]
    result = store.repair("sub", drift)
    assert result.removed == ["link"]
    assert (share.parent / "outside").is_dir() and not (share / "sub" / "link").exists()


def test_repair_from_the_verified_cache(share: Path, tmp_path: Path) -> None:
    store = _store(share, cache=tmp_path / "cache")
    _drift_locally(share)
    result = store.repair("sub", store.verify("sub").drift)
    assert sorted(result.repaired) == ["a.txt", "docs/c/d.txt"]
    assert result.removed == ["stray.tmp"] and result.resend == []
    assert tree(share / "sub") == FILES
    assert store.verify("sub").match and store.check("sub").drift == []


def test_without_a_cache_repair_returns_paths_to_resend(share: Path) -> None:
    store = _store(share)
    _drift_locally(share)
    result = store.repair("sub", store.verify("sub").drift)
    assert sorted(result.resend) == ["a.txt", "docs/c/d.txt"]
    assert result.repaired == [] and result.removed == ["stray.tmp"]


def test_a_damaged_cache_entry_is_not_used(share: Path, tmp_path: Path) -> None:
    store = _store(share, cache=tmp_path / "cache")
    (share / "sub" / "a.txt").write_bytes(b"edited")
    cached = tmp_path / "cache" / "sub" / sha(b"alpha")[:2] / sha(b"alpha")
    cached.write_bytes(b"rotten")
    result = store.repair("sub", store.verify("sub").drift)
    assert result.resend == ["a.txt"] and not cached.exists()
    assert (share / "sub" / "a.txt").read_bytes() == b"edited"


def test_resent_files_package_repairs_the_drift(share: Path) -> None:
    """What the daemon's resend request leads to: the platform sends the files again."""
    store = _store(share)
    (share / "sub" / "a.txt").write_bytes(b"edited")
    header, payload = files_package({"a.txt": b"alpha"}, sequence=2)
    header["manifest"]["base_digest"] = store.position("sub").digest  # type: ignore[union-attr]
    header["manifest"]["file_count"] = len(FILES)
    header["manifest"]["expected_digest"] = store.position("sub").digest  # type: ignore[union-attr]
    header["expected_state"] = None
    assert store.apply(header, [payload], "sub").match
    assert store.verify("sub").match


def test_cache_keeps_only_the_current_set(share: Path, tmp_path: Path) -> None:
    store = _store(share, cache=tmp_path / "cache")
    header, payload = files_package({"a.txt": b"new"}, FILES, sequence=2)
    store.apply(header, [payload], "sub")
    cached = sorted(p.name for p in (tmp_path / "cache" / "sub").rglob("*") if p.is_file())
    assert cached == [sha(b"new")]


# ------------------------------------------------------------------ the watcher


class Reports:
    def __init__(self) -> None:
        self.items: list[DriftReport] = []
        self.event = threading.Event()

    def __call__(self, report: DriftReport) -> None:
        self.items.append(report)
        self.event.set()


def test_watcher_reports_local_changes_via_inotify(share: Path) -> None:
    store = _store(share)
    reports = Reports()
    watcher = DriftWatcher(store, "sub", reports, debounce=0.2, poll_interval=3600)
    watcher.start()
    try:
        assert watcher.mode == "inotify"
        header, payload = files_package({**FILES, "e.txt": b"e"}, FILES, sequence=2)
        store.apply(header, [payload], "sub")  # our own writes are not drift
        assert not reports.event.wait(1.0)
        (share / "sub" / "docs" / "b.pdf").write_bytes(b"tampered")
        assert reports.event.wait(10)
    finally:
        watcher.stop()
    assert [(d.path, d.kind) for d in reports.items[0].items] == [("docs/b.pdf", "changed")]
    assert reports.items[0].mode == "inotify"


def test_watcher_falls_back_to_polling_when_inotify_limits_are_hit(
    share: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(share)

    class LimitedObserver:
        def schedule(self, *args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    reports = Reports()
    watcher = DriftWatcher(store, "sub", reports, poll_interval=0.3, observer_factory=LimitedObserver)
    with caplog.at_level("WARNING"):
        watcher.start()
    try:
        assert watcher.mode == "polling" and "inotify limit" in watcher.reason
        assert watcher.status()["mode"] == "polling"
        assert any("periodic scanning" in r.getMessage() for r in caplog.records)
        (share / "sub" / "a.txt").unlink()
        assert reports.event.wait(10)
    finally:
        watcher.stop()
    assert reports.items[0].items == [DriftItem("a.txt", "missing", sha(b"alpha"), None)]


def test_watcher_polls_on_a_network_filesystem(share: Path, tmp_path: Path) -> None:
    store = _store(share)
    st = os.stat(share / "sub")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"36 1 {os.major(st.st_dev)}:{os.minor(st.st_dev)} /export {share} rw - nfs4 srv:/export rw\n"
    )
    assert filesystem_type(share / "sub", str(mountinfo)) == "nfs4"
    watcher = DriftWatcher(store, "sub", Reports(), poll_interval=3600, mountinfo=str(mountinfo))
    watcher.start()
    watcher.stop()
    assert watcher.mode == "polling" and "network filesystem (nfs4)" in watcher.reason


@pytest.mark.parametrize(
    ("fstype", "network"),
    [
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("fuse.sshfs", True),
        ("fuse.rclone", True),
        ("ext4", False),
        ("xfs", False),
        ("tmpfs", False),
        ("overlay", False),
        ("fuseblk", False),
    ],
)
def test_network_filesystem_types(fstype: str, network: bool) -> None:
    assert is_network_fs(fstype) is network


def test_filesystem_type_of_a_real_path(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path) not in ("", "unknown")


# ------------------------------------------------------------------ revocation


def test_purge_deletes_everything_and_lists_it_for_the_receipt(share: Path, tmp_path: Path) -> None:
    store = _store(share, cache=tmp_path / "cache")
    (share / "sub" / "local-note.txt").write_bytes(b"x")
    (share / "sub" / "escape").symlink_to(share.parent / "outside", target_is_directory=True)
    (share.parent / "outside" / "keep.me").write_bytes(b"not ours")
    result = store.purge("sub")
    assert result.existed and result.position is not None and result.position.sequence == 1
    assert sorted(f.path for f in result.files) == sorted(FILES)
    assert {f.path: f.sha256 for f in result.files}["a.txt"] == sha(b"alpha")
    assert sorted(result.other_paths) == ["escape", "local-note.txt"]
    assert not (share / "sub").exists() and os.listdir(share) == []
    assert (share.parent / "outside" / "keep.me").read_bytes() == b"not ours"
    assert not (tmp_path / "cache" / "sub").exists()
    again = store.purge("sub")
    assert not again.existed and again.files == []


def test_purge_refuses_a_directory_that_is_not_ours(share: Path) -> None:
    store = ShareStore(share)
    (share / "sub").mkdir()
    (share / "sub" / "theirs").write_bytes(b"t")
    with pytest.raises(E.ForeignDirectoryError):
        store.purge("sub")
    assert (share / "sub" / "theirs").exists()


def test_purge_of_a_symlinked_subscription_dir_does_not_follow_it(share: Path) -> None:
    store = ShareStore(share)
    (share.parent / "outside" / "f").write_bytes(b"f")
    (share / "sub").symlink_to(share.parent / "outside", target_is_directory=True)
    with pytest.raises(E.UnsafeDestinationError):
        store.purge("sub")
    assert (share.parent / "outside" / "f").exists()


def test_watcher_debounces_a_burst_of_changes_into_one_check(share: Path) -> None:
    store = _store(share)
    reports = Reports()
    watcher = DriftWatcher(store, "sub", reports, debounce=1.0, poll_interval=3600)
    watcher.start()
    try:
        for i in range(20):
            (share / "sub" / f"burst-{i:02d}.tmp").write_bytes(b"x")
        assert reports.event.wait(15)
        time.sleep(2.5)  # longer than the debounce: a second report would have arrived by now
    finally:
        watcher.stop()
    assert len(reports.items) <= 2  # 20 files, 40+ events: one check (two if the burst straddled)
    reported = {d.path for r in reports.items for d in r.items}
    assert reported == {f"burst-{i:02d}.tmp" for i in range(20)}


def test_a_very_deep_local_tree_is_reported_as_one_directory_and_removed(share: Path) -> None:
    store = _store(share)
    deep = share / "sub" / "deep"
    path = deep
    for i in range(60):
        path = path / f"d{i}"
    path.mkdir(parents=True)
    (path / "bottom.txt").write_bytes(b"b")
    drift = store.verify("sub").drift
    (item,) = drift
    assert item.kind == "added" and item.found == "a directory" and item.path.startswith("deep/d0/")
    assert store.repair("sub", drift).removed[-1].endswith("bottom.txt")
    assert store.verify("sub").match and not deep.exists()  # emptied parents pruned too
