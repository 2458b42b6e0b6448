"""Disk full: the free-space check refuses early; ENOSPC mid-apply leaves the previous set intact.

Runs on a real, small tmpfs mounted for the test (we are root in CI and here).
8 MiB rather than 2: the per-subscription state database holds the file-set
digest state (514 KiB) plus its WAL, and the test needs room for an old set.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.stores.shares import errors as E
from connectors.stores.shares import fsops
from connectors.stores.shares.store import ShareStore
from tests.conftest import service_unavailable
from tests.test_shares_support import files_package, tree

OLD = {f"old/{i}.bin": bytes([i]) * 100_000 for i in range(5)}


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        service_unavailable("a tmpfs mount (needs root / CAP_SYS_ADMIN)", RuntimeError(proc.stderr.strip()))
    try:
        (mount_point / "share").mkdir()
        yield mount_point / "share"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_free_space_check_refuses_before_writing(small_fs: Path) -> None:
    store = ShareStore(small_fs, space_margin=1 << 20)
    header, payload = files_package(OLD, sequence=1)
    store.apply(header, [payload], "sub")
    free_before = _free(small_fs)
    big = {**OLD, "big.bin": b"B" * (free_before - (1 << 19))}  # fits, but not with the 1 MiB margin
    header, payload = files_package(big, OLD, sequence=2)
    with pytest.raises(E.InsufficientSpaceError) as info:
        store.apply(header, [payload], "sub")
    assert "margin" in str(info.value)
    assert tree(small_fs / "sub") == OLD
    assert store.position("sub").sequence == 1  # type: ignore[union-attr]
    assert _free(small_fs) >= free_before - 64 * 1024


def test_running_out_of_space_mid_apply_keeps_the_previous_set(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ShareStore(small_fs, space_margin=0)
    header, payload = files_package(OLD, sequence=1)
    store.apply(header, [payload], "sub")
    free_before = _free(small_fs)
    # Another process takes the space between our check and our writes: the check is told
    # there is plenty, the filesystem then really runs out.
    monkeypatch.setattr(fsops, "free_space", lambda fd: (1 << 40, None))
    new = {**{f"new/{i}.bin": bytes([i]) * 400_000 for i in range(20)}, "old/0.bin": b"changed"}
    header, payload = files_package(new, OLD, sequence=2)
    with pytest.raises(E.DiskFullError) as info:
        store.apply(header, [payload], "sub")
    assert "previous file set is intact" in str(info.value)
    assert tree(small_fs / "sub") == OLD
    assert store.position("sub").sequence == 1  # type: ignore[union-attr]
    assert store.verify("sub").match
    assert not list((small_fs / "sub" / ".edu-sync" / "staging").iterdir())
    assert _free(small_fs) >= free_before - 64 * 1024  # the partial staging was released
    monkeypatch.undo()
    smaller = {**OLD, "old/0.bin": b"changed", "new/one.bin": b"1" * 200_000}
    header, payload = files_package(smaller, OLD, sequence=2)
    assert store.apply(header, [payload], "sub").match
    assert tree(small_fs / "sub") == smaller
