"""Filesystem operations relative to directory descriptors, never following symlinks.

Every path below the share root is reached one component at a time with
``O_NOFOLLOW | O_DIRECTORY`` from an already-open directory, so a symlink (or a
rename race replacing a directory by one) anywhere inside a subscription
directory can never redirect a write, a delete or a read outside it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from connectors.stores.shares.errors import UnsafeDestinationError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK = 1 << 20
MAX_WALK_DEPTH = 40  # synced paths have at most 32 components (paths.MAX_DEPTH)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def describe(mode: int) -> str:
    """What kind of thing an lstat mode is, for error messages."""
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "an unknown file type"


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat relative to ``dir_fd``; None if absent."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dir_fd: int, name: str, shown: str) -> int:
    """Open a subdirectory without following a symlink; ``shown`` names it in errors."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = lstat_at(dir_fd, name)
            raise UnsafeDestinationError(shown, describe(st.st_mode) if st else "missing") from exc
        raise


def make_dir_at(dir_fd: int, name: str, shown: str, mode: int, uid: int, gid: int) -> int:
    """Open a subdirectory, creating it (``mode``, owner) if absent; never follows a symlink."""
    try:
        os.mkdir(name, mode, dir_fd=dir_fd)
        created = True
    except FileExistsError:
        created = False
    fd = open_dir_at(dir_fd, name, shown)
    if created:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
    return fd


def fsync_fd(fd: int) -> None:
    os.fsync(fd)


_SYNC_FILE_RANGE_WAIT_BEFORE = 1  # <linux/fs.h>
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages, do not wait
_SYNC_FILE_RANGE_WAIT_AFTER = 4
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    _sync_file_range.restype = ctypes.c_int


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` (0: to the end) to disk now.

    Not a durability step (fsync/syncfs still are): it only lets the device work while we
    decrypt and hash the next bytes, instead of leaving all of it to one final flush. Where
    the call is unsupported it does nothing.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def drop_written(fd: int, offset: int, length: int) -> None:
    """Wait until a range is written to disk, then drop it from the page cache.

    Raises ``OSError`` on a write error: waiting here consumes the error that a later
    ``fsync`` of the same open file would otherwise have reported. Not a durability step
    either (the device's cache is flushed by fsync/syncfs); it keeps a large staged file
    from filling the page cache, whose new pages cost more to allocate than the disk takes
    to write them (see docs/shares.md, "Where the time goes"). Does nothing where
    ``sync_file_range`` is missing.
    """
    if _sync_file_range is None:
        return
    flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
    if _sync_file_range(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"writing back staged data: {os.strerror(err)}")
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class Flusher:
    """Starts writeback of written files and closes them, in its own thread.

    ``sync_file_range`` does the block allocation and I/O submission in the caller's
    context (a tenth of a millisecond or more per small file); handing it, and the
    ``close``, to this thread lets the writer go on to the next file meanwhile. The
    writer hands a descriptor over with :meth:`done` and must not use it afterwards;
    everything is carried out in the order it was asked for. Finished small files are
    handed over ``batch`` at a time (one queue operation, one wake-up for several files).
    Written data leaves the page cache behind the writer (:func:`drop_written`): a file
    written in ranges (:meth:`start`) range by range, once more than ``behind`` newer
    ranges are under writeback, and the rest when it is done; other files whole, once
    ``small_behind`` later files were handed over (they stay open until then), or at the
    end. That wait also paces the writer to the disk (the queue is bounded). Nothing
    here is a durability step: the fsync/syncfs barrier still is.
    """

    def __init__(self, depth: int = 16, batch: int = 8, behind: int = 4, small_behind: int = 64) -> None:
        self._queue: queue.Queue[list[tuple[int, int, int, bool]] | None] = queue.Queue(maxsize=depth)
        self._pending: list[tuple[int, int, int, bool]] = []
        self._batch = batch
        self._behind = behind
        self._small_behind = small_behind
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="share-writeback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ranges: dict[int, collections.deque[tuple[int, int]]] = {}  # large files: ranges still cached
        small: collections.deque[int] = collections.deque()  # finished small files, still open
        while (items := self._queue.get()) is not None:
            for fd, offset, length, close in items:
                if length >= 0:
                    start_writeback(fd, offset, length)
                if not close:
                    cached = ranges.setdefault(fd, collections.deque())
                    cached.append((offset, length))
                    while len(cached) > self._behind:
                        self._drop(fd, *cached.popleft())
                elif ranges.pop(fd, None) is not None:
                    self._drop_and_close(fd)
                else:
                    small.append(fd)
                    if len(small) > self._small_behind:
                        self._drop_and_close(small.popleft())
        for fd in small:
            self._drop_and_close(fd)

    def _drop(self, fd: int, offset: int, length: int) -> None:
        try:
            drop_written(fd, offset, length)
        except OSError as exc:
            self._error = self._error or exc

    def _drop_and_close(self, fd: int) -> None:
        self._drop(fd, 0, 0)  # the whole file
        try:
            os.close(fd)
        except OSError as exc:
            self._error = self._error or exc

    def _push(self) -> None:
        items, self._pending = self._pending, []
        self._queue.put(items)

    def start(self, fd: int, offset: int, length: int) -> None:
        """Start writeback of ``length`` bytes at ``offset`` of a file still being written."""
        self._pending.append((fd, offset, length, False))
        self._push()

    def done(self, fd: int, offset: int = 0, length: int = -1) -> None:
        """Hand ``fd`` over: start writeback of the range (none if ``length`` < 0), then close it."""
        self._pending.append((fd, offset, length, True))
        if len(self._pending) >= self._batch:
            self._push()

    def __enter__(self) -> Flusher:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        """Wait until everything handed over is done; raise a ``close`` error if nothing else was raised."""
        if self._pending:
            self._push()
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise self._error


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd``: one barrier for many written files."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class DirTree:
    """Open directories below one root by relative path, caching the descriptors."""

    def __init__(self, root_fd: int, *, mode: int = 0o750, uid: int = -1, gid: int = -1) -> None:
        self.root_fd = root_fd
        self.mode, self.uid, self.gid = mode, uid, gid
        self._fds: dict[str, int] = {"": root_fd}

    def open(self, rel_dir: str, *, create: bool) -> int | None:
        """The fd of ``rel_dir`` ('' is the root); None if absent and not ``create``."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            return fd
        parent, _, name = rel_dir.rpartition("/")
        parent_fd = self.open(parent, create=create)
        if parent_fd is None:
            return None
        if create:
            fd = make_dir_at(parent_fd, name, rel_dir, self.mode, self.uid, self.gid)
        else:
            if lstat_at(parent_fd, name) is None:
                return None
            fd = open_dir_at(parent_fd, name, rel_dir)
        self._fds[rel_dir] = fd
        return fd

    def parent_of(self, path: str, *, create: bool) -> tuple[int | None, str]:
        """(fd of the directory holding ``path``, base name)."""
        parent, _, name = path.rpartition("/")
        return self.open(parent, create=create), name

    def opened(self) -> list[int]:
        return list(self._fds.values())

    def forget(self, rel_dir: str) -> None:
        fd = self._fds.pop(rel_dir, None)
        if fd is not None and fd != self.root_fd:
            os.close(fd)

    def close(self) -> None:
        for rel, fd in self._fds.items():
            if rel:
                os.close(fd)
        self._fds = {"": self.root_fd}

    def __enter__(self) -> DirTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hash_at(dir_fd: int, name: str) -> tuple[int, str]:
    """(size, SHA-256 hex) of a regular file, opened without following a symlink."""
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeDestinationError(name, describe(st.st_mode))
        h = hashlib.sha256()
        size = 0
        while True:
            block = os.read(fd, CHUNK)
            if not block:
                break
            h.update(block)
            size += len(block)
        return size, h.hexdigest()
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Found:
    """One non-directory entry found below a root."""

    path: str
    mode: int
    size: int
    mtime_ns: int
    ino: int


def walk(
    root_fd: int, *, skip_top: frozenset[str] = frozenset(), prefix: str = "", depth: int = 0
) -> Iterator[Found]:
    """Every non-directory entry below ``root_fd`` (symlinks reported, never followed).

    A directory deeper than any synced path can be (``MAX_WALK_DEPTH``) is reported itself
    instead of descended into, so a hostile local tree cannot exhaust descriptors or the stack.
    """
    with os.scandir(root_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if not prefix and entry.name in skip_top:
            continue
        st = entry.stat(follow_symlinks=False)
        rel = f"{prefix}{entry.name}"
        if stat.S_ISDIR(st.st_mode) and depth < MAX_WALK_DEPTH:
            fd = open_dir_at(root_fd, entry.name, rel)
            try:
                yield from walk(fd, prefix=rel + "/", depth=depth + 1)
            finally:
                os.close(fd)
        else:
            yield Found(rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)


def remove_tree_at(dir_fd: int, name: str, shown: str, removed: list[str]) -> None:
    """Delete ``name`` (file, symlink or whole directory) below ``dir_fd`` without following links.

    Appends every removed non-directory path (relative, ``shown`` prefix) to ``removed``.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        removed.append(shown)
        return
    fd = open_dir_at(dir_fd, name, shown)
    try:
        with os.scandir(fd) as it:
            children = sorted(e.name for e in it)
        for child in children:
            remove_tree_at(fd, child, f"{shown}/{child}", removed)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def prune_empty_parents(tree: DirTree, path: str) -> list[str]:
    """Remove the now-empty directories above ``path`` (never the root); return their fsync parents."""
    touched: list[str] = []
    parent = path.rpartition("/")[0]
    while parent:
        grand, _, name = parent.rpartition("/")
        gfd = tree.open(grand, create=False)
        if gfd is None:
            break
        tree.forget(parent)
        try:
            os.rmdir(name, dir_fd=gfd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                break
            raise
        touched.append(grand)
        parent = grand
    return touched


def free_space(fd: int) -> tuple[int, int | None]:
    """(bytes available to us, inodes available or None when the filesystem has no inode limit)."""
    st = os.fstatvfs(fd)
    inodes = st.f_favail if st.f_files else None
    return st.f_bavail * st.f_frsize, inodes


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
