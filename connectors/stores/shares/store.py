"""ShareStore: apply ``files`` packages into one subscription directory, atomically.

Layout of a subscription directory ``<share root>/<dirname>/``::

    <the synced files>              what share users see
    .edu-sync/                      agent metadata (0750)
        marker.json                 resource, provider, security level, agreement id
        state.db                    position, file index, apply journal (SQLite)
        staging/<package id>/       verified content waiting for the swap (0700)

Apply protocol (see docs/shares.md, "Applying: layout and atomicity"):

1. validate header and manifest; check sequence, base digest, the resulting set,
   the destination (no symlink or non-directory in the way) and free space —
   any failure here raises before anything is written;
2. stage: stream every new/changed file into ``staging/<package id>/`` (0700, so
   no share user ever sees partial content), hash while writing, compare with
   the manifest; an fsync per file, or one ``syncfs`` for many files, makes them
   durable; staged files survive a crash
   and are re-hashed instead of re-written when the same package is retried;
3. commit point: one SQLite transaction stores the plan (renames, removals, new
   index and position);
4. roll forward: rename staged files into place (``renameat``, parents created
   without following links), then delete removed files, make it durable, and
   write the new index/position in one transaction, dropping the journal.

A crash before 3 leaves the old set (staging is private); a crash after 3 is
rolled forward by :meth:`ShareStore.recover` (idempotent), so the directory is
always the old set or the new one, never a mix with partial files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import hashlib
import json
import logging
import os
import pwd
import re
import sqlite3
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.stores.shares import fsops
from connectors.stores.shares.cache import VerifiedCache
from connectors.stores.shares.drift import scan
from connectors.stores.shares.errors import (
    BaseMismatchError,
    DiskFullError,
    ExpectedDigestError,
    FileDigestMismatchError,
    ForeignDirectoryError,
    InsufficientSpaceError,
    InvalidShareConfigError,
    PackageRejected,
    PayloadTooShortError,
    RecoveryError,
    UnsafeDestinationError,
    UnsafePathError,
)
from connectors.stores.shares.fileset import (
    advance,
    mismatched_files,
    summary_digest,
)
from connectors.stores.shares.header import FilesPackage
from connectors.stores.shares.manifest import ManifestEntry, resulting_set
from connectors.stores.shares.paths import META_DIRNAME, check_collisions, validate_dirname
from connectors.stores.shares.results import (
    ApplyResult,
    DriftItem,
    PurgeResult,
    RecoveryOutcome,
    RepairResult,
    VerifyResult,
)
from connectors.stores.shares.state import Position
from connectors.stores.shares.stream import EntryReader, Plaintext
from connectors.stores.shares.subscription import Subscription
from protocol.digest import LtHash

log = logging.getLogger(__name__)

MARKER_NAME = "marker.json"
PART_SUFFIX = ".part"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_FORBIDDEN_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
FSYNC_FILES_MAX = 32  # "auto" durability: per-file fsync up to this many, one syncfs beyond
WRITEBACK_STEP = 8 << 20  # start writeback of a large file every this many bytes (see _write_entry)


@dataclass(frozen=True)
class _WriteOptions:
    create_mode: int
    fsync: bool


@dataclass(frozen=True)
class ShareModes:
    """Permissions from local config; the sender never chooses them."""

    file_mode: int = 0o640
    dir_mode: int = 0o750

    def __post_init__(self) -> None:
        for name, mode in (("file_mode", self.file_mode), ("dir_mode", self.dir_mode)):
            if mode & _FORBIDDEN_MODE_BITS or not 0 <= mode <= 0o7777:
                raise InvalidShareConfigError(
                    f"{name} {mode:#o}: setuid, setgid and sticky bits are not allowed"
                )
        if self.dir_mode & 0o700 != 0o700:
            raise InvalidShareConfigError(f"dir_mode {self.dir_mode:#o} must give the owner rwx")


def _staging_dirname(package_id: str) -> str:
    if re.fullmatch(r"[0-9a-f]{32}", package_id):
        return package_id
    return hashlib.sha256(package_id.encode()).hexdigest()[:32]


def _resolve_id(value: int | str | None, kind: str) -> int:
    if value is None:
        return -1
    if isinstance(value, int):
        return value
    try:
        return pwd.getpwnam(value).pw_uid if kind == "owner" else grp.getgrnam(value).gr_gid
    except KeyError as exc:
        raise InvalidShareConfigError(f"{kind} {value!r} does not exist on this host") from exc


def _current_umask() -> int | None:
    """The process umask, read without changing it (Linux /proc); None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


class ShareStore:
    """Applies, verifies, repairs and purges the subscription directories under one share root."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        modes: ShareModes | None = None,
        owner: int | str | None = None,
        group: int | str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        space_margin: int = 64 << 20,
        durability: str = "auto",
    ) -> None:
        self.root = Path(root)
        self.modes = modes or ShareModes()
        self.uid = _resolve_id(owner, "owner")
        self.gid = _resolve_id(group, "group")
        self.cache = VerifiedCache(cache_dir) if cache_dir is not None else None
        if space_margin < 0:
            raise InvalidShareConfigError("space_margin must be >= 0")
        self.space_margin = space_margin
        if durability not in ("auto", "syncfs", "fsync"):
            raise InvalidShareConfigError(
                "durability is 'auto', 'syncfs' (one barrier per phase) or 'fsync' (per file)"
            )
        self.durability = durability

    # ------------------------------------------------------------------ opening

    @staticmethod
    def _checked_dirname(dirname: str) -> str:
        """The subscription's directory name comes from local config or the resolver, not the package."""
        try:
            return validate_dirname(dirname)
        except UnsafePathError as exc:
            raise InvalidShareConfigError(f"subscription directory name: {exc}") from exc

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidShareConfigError(f"share root {self.root}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def _subscription(self, dirname: str, *, package: FilesPackage | None = None) -> Iterator[Subscription]:
        """Open and lock a subscription directory; create it (with its marker) when ``package`` is given."""
        dirname = self._checked_dirname(dirname)
        root_fd = self._open_root()
        fd = meta_fd = -1
        try:
            existed = fsops.lstat_at(root_fd, dirname) is not None
            if package is None:
                if not existed:
                    raise FileNotFoundError(errno.ENOENT, "no such subscription directory", dirname)
                fd = fsops.open_dir_at(root_fd, dirname, dirname)
            else:
                fd = fsops.make_dir_at(root_fd, dirname, dirname, self.modes.dir_mode, self.uid, self.gid)
            meta_existed = fsops.lstat_at(fd, META_DIRNAME) is not None
            if not meta_existed:
                if package is None:
                    with os.scandir(fd) as it:
                        if not any(True for _ in it):  # created ahead by an operator: nothing applied yet
                            raise FileNotFoundError(
                                errno.ENOENT, "subscription directory is still empty", dirname
                            )
                    raise ForeignDirectoryError(
                        f"{dirname}: no {META_DIRNAME}/ marker; not a subscription directory"
                    )
                with os.scandir(fd) as it:
                    if any(True for _ in it):
                        raise ForeignDirectoryError(
                            f"{dirname} exists, is not empty and carries no {META_DIRNAME} marker; "
                            "refusing to take it over"
                        )
            meta_fd = fsops.make_dir_at(
                fd, META_DIRNAME, f"{dirname}/{META_DIRNAME}", self.modes.dir_mode, self.uid, self.gid
            )
            fcntl.flock(meta_fd, fcntl.LOCK_EX)
            if package is not None:
                self._check_marker(meta_fd, dirname, package)
            if not existed:
                os.fsync(root_fd)
            sub = Subscription(root_fd, dirname, fd, meta_fd)
        except BaseException:
            for f in (meta_fd, fd, root_fd):
                if f >= 0:
                    fsops.close_quietly(f)
            raise
        try:
            yield sub
        finally:
            sub.close()

    def _check_marker(self, meta_fd: int, dirname: str, package: FilesPackage) -> None:
        wanted = package.marker()
        current = self._read_marker(meta_fd)
        if current is not None and current.get("subscription") != package.subscription:
            raise ForeignDirectoryError(
                f"{dirname} belongs to subscription {current.get('subscription')!r}, "
                f"not {package.subscription!r}"
            )
        if current != wanted:
            self._write_small(meta_fd, MARKER_NAME, json.dumps(wanted, ensure_ascii=False, indent=1).encode())

    @staticmethod
    def _read_marker(meta_fd: int) -> dict[str, Any] | None:
        try:
            fd = os.open(MARKER_NAME, fsops.READ_FLAGS, dir_fd=meta_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(1 << 20))
        return data if isinstance(data, dict) else None

    def _write_small(self, dir_fd: int, name: str, data: bytes) -> None:
        tmp = name + PART_SUFFIX
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, fsops.CREATE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, data)
            os.fchmod(fd, self.modes.file_mode)
            if self.uid != -1 or self.gid != -1:
                os.fchown(fd, self.uid, self.gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)

    # ------------------------------------------------------------------ apply

    def apply(self, header: object, plaintext: Plaintext, dirname: str) -> ApplyResult:
        """Apply one verified ``files`` package exactly once (see the module docstring)."""
        package = FilesPackage.from_header(header)
        manifest = package.manifest
        with self._subscription(dirname, package=package) as sub:
            self._recover_locked(sub)
            position = sub.state.position()
            if position is not None and package.sequence <= position.sequence:
                return ApplyResult(
                    "already_applied",
                    package.package_id,
                    package.sequence,
                    local_digest=position.digest,
                    expected_digest=manifest.expected_digest,
                    match=position.digest == manifest.expected_digest,
                )
            current = sub.state.index()
            state = sub.state.lthash()
            current_digest = summary_digest(state)
            if not manifest.is_snapshot:
                have = position.sequence if position else 0
                if package.builds_on != have:
                    raise BaseMismatchError(
                        f"package {package.sequence} builds on sequence {package.builds_on}; "
                        f"{dirname} is at {have} (held, never applied out of order)"
                    )
            base_ok = manifest.is_snapshot or manifest.base_digest == current_digest
            if base_ok:
                result_set = resulting_set(current, manifest)
                removed = (
                    sorted(set(current) - set(result_set)) if manifest.is_snapshot else list(manifest.removed)
                )
            else:
                # The platform's idea of our set differs from ours: apply anyway (the
                # result is still old-or-new, atomically) and name the files to resend.
                log.warning(
                    "share base digest differs",
                    extra={"dirname": dirname, "expected": manifest.base_digest, "local": current_digest},
                )
                removed = [p for p in manifest.removed if p in current]
                gone = set(removed)
                result_set = {p: e for p, e in current.items() if p not in gone}
                result_set.update((e.path, e) for e in manifest.entries)
                check_collisions(result_set)
            after = advance(state, current, manifest.entries, removed, snapshot=manifest.is_snapshot)
            predicted = summary_digest(after)
            if base_ok and predicted != manifest.expected_digest:
                raise ExpectedDigestError(
                    f"applying the manifest to {manifest.base_digest or 'nothing'} gives file-set digest "
                    f"{predicted}, the signed header expects {manifest.expected_digest}"
                )
            intact = self._intact(sub, [e for e in manifest.entries if current.get(e.path) == e])
            to_write = [e for e in manifest.entries if e.path not in intact]
            self._preflight(sub, to_write, removed)
            self._check_space(sub, to_write)
            opts = self._write_options(len(to_write))
            # A thread decrypts, decompresses, cuts and hashes ahead; this one only writes.
            sizes = [(e.path, e.size) for e in manifest.entries]
            with EntryReader(plaintext, sizes, prefetch=True) as reader:
                writes, stats = self._stage(sub, package, reader, intact, opts)
            plan = {
                "snapshot": manifest.is_snapshot,
                "staging": _staging_dirname(package.package_id),
                "writes": writes,
                "removed": removed,
                "position": {"sequence": package.sequence, "package_id": package.package_id},
            }
            try:
                sub.state.commit_plan(package.package_id, plan)
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                self._drop_staging(sub, _staging_dirname(package.package_id))
                raise DiskFullError(
                    f"{dirname}: filesystem full while committing package {package.package_id}; "
                    "the previous file set is intact"
                ) from exc
            self._roll_forward(sub, plan, after)
            local = sub.state.position()
            assert local is not None
            result = ApplyResult(
                "applied",
                package.package_id,
                package.sequence,
                files_written=stats["written"],
                files_unchanged=len(manifest.entries) - len(to_write),
                files_removed=len(removed),
                files_resumed=stats["resumed"],
                bytes_written=stats["bytes"],
                local_digest=local.digest,
                expected_digest=manifest.expected_digest,
                match=local.digest == manifest.expected_digest,
            )
            if not result.match and package.expected_summary is not None:
                result.mismatched_buckets, result.mismatched_files = mismatched_files(
                    result_set, after.summary(), package.expected_summary
                )
            log.info(
                "share apply",
                extra={
                    "dirname": dirname,
                    "package_id": package.package_id,
                    "sequence": package.sequence,
                    "written": stats["written"],
                    "match": result.match,
                },
            )
            return result

    @staticmethod
    def _intact(sub: Subscription, unchanged: list[ManifestEntry]) -> dict[str, tuple[int, int]]:
        """Paths the package leaves as they are and that are on disk exactly as the agent wrote them.

        A file edited locally (its size, inode or mtime moved) is rewritten even if the
        package repeats the indexed content: that is how a resend repairs drift.
        """
        intact: dict[str, tuple[int, int]] = {}
        with fsops.DirTree(sub.fd) as tree:
            for entry in unchanged:
                known = sub.state.lookup(entry.path)
                try:
                    parent_fd, name = tree.parent_of(entry.path, create=False)
                except UnsafeDestinationError:
                    continue
                st = fsops.lstat_at(parent_fd, name) if parent_fd is not None else None
                if (
                    known is not None
                    and st is not None
                    and stat.S_ISREG(st.st_mode)
                    and (st.st_size, st.st_ino, st.st_mtime_ns) == (known.size, known.ino, known.mtime_ns)
                ):
                    intact[entry.path] = (st.st_ino, st.st_mtime_ns)
        return intact

    def _preflight(self, sub: Subscription, to_write: list[ManifestEntry], removed: list[str]) -> None:
        """Refuse, before writing, any destination where a symlink or a non-directory is in the way."""
        with fsops.DirTree(sub.fd) as tree:
            for path in [e.path for e in to_write] + removed:
                parent_fd, name = tree.parent_of(path, create=False)  # raises on a symlinked parent
                if parent_fd is None:
                    continue
                st = fsops.lstat_at(parent_fd, name)
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise UnsafeDestinationError(f"{sub.dirname}/{path}", fsops.describe(st.st_mode))

    def _check_space(self, sub: Subscription, to_write: list[ManifestEntry]) -> None:
        need = sum(e.size for e in to_write)
        free, inodes = fsops.free_space(sub.fd)
        if need + self.space_margin > free:
            raise InsufficientSpaceError(
                f"{sub.dirname}: the package needs {need} bytes plus a {self.space_margin}-byte margin, "
                f"{free} bytes are free"
            )
        if inodes is not None and len(to_write) + 64 > inodes:
            raise InsufficientSpaceError(
                f"{sub.dirname}: {len(to_write)} files to write, {inodes} inodes free"
            )

    # ------------------------------------------------------------------ staging

    def _stage(
        self,
        sub: Subscription,
        package: FilesPackage,
        reader: EntryReader,
        intact: dict[str, tuple[int, int]],
        opts: _WriteOptions,
    ) -> tuple[list[list[Any]], dict[str, int]]:
        """Stream new content into the private staging directory; (plan writes, stats)."""
        name = _staging_dirname(package.package_id)
        journal = sub.state.journal()
        staging_fd = sub.staging_fd(create=True)
        assert staging_fd is not None
        try:
            if journal is None or journal.package_id != package.package_id:
                self._clear_staging(staging_fd)
                sub.state.begin_staging(package.package_id)
            pkg_fd = fsops.make_dir_at(staging_fd, name, name, 0o700, -1, -1)
        finally:
            os.close(staging_fd)
        stats = {"written": 0, "resumed": 0, "bytes": 0}
        writes: list[list[Any]] = []
        try:
            with os.scandir(pkg_fd) as it:
                present = {e.name for e in it}
            # One thread decrypts, decompresses and hashes ahead (the reader), this one writes,
            # and the flusher starts writeback and closes each finished file.
            with fsops.Flusher() as flusher:
                for index, entry in enumerate(package.manifest.entries):
                    if entry.path in intact:
                        self._consume(reader, entry)
                        writes.append([None, entry.path, entry.size, entry.sha256, *intact[entry.path]])
                        continue
                    staged = f"{index:06d}.{entry.sha256}"
                    if staged in present:
                        if fsops.hash_at(pkg_fd, staged) == (entry.size, entry.sha256):
                            self._consume(reader, entry)
                            stats["resumed"] += 1
                            st = os.stat(staged, dir_fd=pkg_fd, follow_symlinks=False)
                            writes.append(
                                [staged, entry.path, entry.size, entry.sha256, st.st_ino, st.st_mtime_ns]
                            )
                            continue
                        os.unlink(staged, dir_fd=pkg_fd)
                    ino, mtime_ns = self._write_entry(pkg_fd, staged, entry, reader, opts, flusher)
                    if self.cache is not None:
                        self.cache.put(sub.dirname, pkg_fd, staged, entry)
                    stats["written"] += 1
                    stats["bytes"] += entry.size
                    writes.append([staged, entry.path, entry.size, entry.sha256, ino, mtime_ns])
            reader.finish()
            if not opts.fsync:
                fsops.syncfs(pkg_fd)
            os.fsync(pkg_fd)
        except PackageRejected:
            self._drop_staging(sub, name)
            raise
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                self._drop_staging(sub, name)
                raise DiskFullError(
                    f"{sub.dirname}: filesystem full while staging package {package.package_id}; "
                    "the previous file set is intact"
                ) from exc
            raise
        finally:
            os.close(pkg_fd)
        return writes, stats

    def _write_options(self, files: int) -> _WriteOptions:
        """How to create and flush this apply's files.

        Files are created with their final mode when the umask lets it through (a syscall
        less per file). ``auto`` durability fsyncs each file when there are few (a syncfs
        would also flush every other process's dirty data on a shared filesystem) and
        uses one syncfs for many (10 000 fsyncs cost far more than one barrier).
        """
        umask = _current_umask()
        usable = umask is not None and not self.modes.file_mode & umask
        per_file = self.durability == "fsync" or (self.durability == "auto" and files <= FSYNC_FILES_MAX)
        return _WriteOptions(self.modes.file_mode if usable else 0o600, per_file)

    def _write_entry(
        self,
        dir_fd: int,
        name: str,
        entry: ManifestEntry,
        reader: EntryReader,
        opts: _WriteOptions,
        flusher: fsops.Flusher | None = None,
    ) -> tuple[int, int]:
        """Write one file into the private staging directory, checking its hash; (inode, mtime_ns).

        A crash can leave it partial under its staging name: a retry re-hashes it and rewrites it
        if it does not match, so no separate "complete" marker is needed. Writeback is started
        every ``WRITEBACK_STEP`` bytes and at the end (``sync_file_range``, by ``flusher`` when
        given, which also closes the file), so the disk works while the next bytes are decrypted
        and hashed instead of in one final flush; durability still comes from the fsync/syncfs
        before the commit point.
        """
        start = flusher.start if flusher is not None else fsops.start_writeback
        fd = os.open(name, fsops.CREATE_FLAGS, opts.create_mode, dir_fd=dir_fd)
        handed = False
        try:
            written = flushed = 0  # bytes written, and already handed to writeback
            for block in reader.blocks():  # hashed by the reader, possibly in its own thread
                written += len(block)
                while block:
                    block = block[os.write(fd, block) :]
                if written - flushed >= WRITEBACK_STEP:
                    start(fd, flushed, written - flushed)
                    flushed = written
            found = reader.digest
            assert found is not None
            if found != entry.sha256:
                raise FileDigestMismatchError(entry.path, entry.sha256, found)
            if opts.create_mode != self.modes.file_mode:
                os.fchmod(fd, self.modes.file_mode)
            if self.uid != -1 or self.gid != -1:
                os.fchown(fd, self.uid, self.gid)
            if opts.fsync:
                os.fsync(fd)
            st = os.fstat(fd)
            tail = written - flushed if flushed < written and not opts.fsync else -1  # an fsync covered it
            if flusher is not None:
                flusher.done(fd, flushed, tail)
                handed = True
            elif tail >= 0:
                fsops.start_writeback(fd, flushed, tail)
        finally:
            if flusher is None:
                os.close(fd)
            elif not handed:
                flusher.done(fd)  # closed after the ranges already queued for it
        return st.st_ino, st.st_mtime_ns

    @staticmethod
    def _consume(reader: EntryReader, entry: ManifestEntry) -> None:
        """Read past an entry that needs no writing, still checking its length and hash."""
        found = reader.skip()
        if found != entry.sha256:
            raise FileDigestMismatchError(entry.path, entry.sha256, found)

    @staticmethod
    def _clear_staging(staging_fd: int) -> None:
        with os.scandir(staging_fd) as it:
            names = [e.name for e in it]
        for name in names:
            fsops.remove_tree_at(staging_fd, name, name, [])

    def _drop_staging(self, sub: Subscription, name: str) -> None:
        staging_fd = sub.staging_fd(create=False)
        if staging_fd is not None:
            try:
                fsops.remove_tree_at(staging_fd, name, name, [])
            finally:
                os.close(staging_fd)
        sub.state.clear_journal()

    # ------------------------------------------------------------------ roll forward

    def _roll_forward(self, sub: Subscription, plan: Mapping[str, Any], after: LtHash | None = None) -> None:
        """Carry out a committed plan; idempotent, so recovery can repeat it after a crash."""
        staging_fd = sub.staging_fd(create=False)
        pkg_fd = None
        if staging_fd is not None and fsops.lstat_at(staging_fd, plan["staging"]) is not None:
            pkg_fd = fsops.open_dir_at(staging_fd, plan["staging"], plan["staging"])
        touched: set[str] = set()
        tree = fsops.DirTree(sub.fd, mode=self.modes.dir_mode, uid=self.uid, gid=self.gid)
        try:
            for staged, path, *_ in plan["writes"]:
                if staged is None or pkg_fd is None or fsops.lstat_at(pkg_fd, staged) is None:
                    continue  # unchanged, or moved into place before a crash
                parent_fd, name = tree.parent_of(path, create=True)
                assert parent_fd is not None
                os.rename(staged, name, src_dir_fd=pkg_fd, dst_dir_fd=parent_fd)
                touched.add(path.rpartition("/")[0])
            # Removals follow the renames; one barrier covers both. A crash before it is
            # harmless: the journal still says "commit" and recovery repeats both steps.
            for path in plan["removed"]:
                parent_fd, name = tree.parent_of(path, create=False)
                if parent_fd is None:
                    continue
                st = fsops.lstat_at(parent_fd, name)
                if st is None or stat.S_ISDIR(st.st_mode):
                    continue
                os.unlink(name, dir_fd=parent_fd)
                touched.add(path.rpartition("/")[0])
                touched.update(fsops.prune_empty_parents(tree, path))
            self._make_durable(sub, tree, touched)
        finally:
            tree.close()
            if pkg_fd is not None:
                os.close(pkg_fd)
        sub.state.finish(dict(plan), after)
        if staging_fd is not None:
            try:
                fsops.remove_tree_at(staging_fd, plan["staging"], plan["staging"], [])
            finally:
                os.close(staging_fd)
        if self.cache is not None:
            self.cache.keep_only(sub.dirname, (f.sha256 for f in sub.state.files()))

    def _make_durable(self, sub: Subscription, tree: fsops.DirTree, touched: set[str]) -> None:
        if not touched:
            return
        if self.durability == "syncfs" or (self.durability == "auto" and len(touched) > FSYNC_FILES_MAX):
            fsops.syncfs(sub.fd)
            return
        for rel in sorted(touched):
            fd = tree.open(rel, create=False)
            if fd is not None:
                os.fsync(fd)

    # ------------------------------------------------------------------ recovery

    def recover(self, dirname: str | None = None) -> list[RecoveryOutcome]:
        """Finish or clean up interrupted applies (all subscription directories, or one). Call at start."""
        if dirname is not None:
            names = [dirname]
        else:
            root_fd = self._open_root()
            try:
                with os.scandir(root_fd) as it:
                    names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
            finally:
                os.close(root_fd)
        outcomes = []
        for name in names:
            try:
                with self._subscription(name) as sub:
                    outcomes.append(self._recover_locked(sub))
            except (ForeignDirectoryError, FileNotFoundError, InvalidShareConfigError):
                continue  # not a subscription directory of ours
        return outcomes

    def _recover_locked(self, sub: Subscription) -> RecoveryOutcome:
        journal = sub.state.journal()
        if journal is None:
            # A crash after the state commit but before the staging cleanup leaves an emptied
            # staging directory behind; nothing in it is needed any more.
            staging_fd = sub.staging_fd(create=False)
            if staging_fd is not None:
                try:
                    self._clear_staging(staging_fd)
                finally:
                    os.close(staging_fd)
            return RecoveryOutcome(sub.dirname, "clean", None)
        if journal.phase == "commit":
            try:
                self._roll_forward(sub, journal.plan)
            except OSError as exc:
                raise RecoveryError(
                    f"{sub.dirname}: could not finish package {journal.package_id}: {exc}"
                ) from exc
            log.warning(
                "share recovery rolled forward",
                extra={"dirname": sub.dirname, "package_id": journal.package_id},
            )
            return RecoveryOutcome(sub.dirname, "rolled_forward", journal.package_id)
        # Staging only: the visible set is untouched; verified staged files are kept for a retry.
        return RecoveryOutcome(sub.dirname, "staging_kept", journal.package_id)

    # ------------------------------------------------------------------ queries

    def position(self, dirname: str) -> Position | None:
        """The applied sequence and file-set digest of a subscription directory (None if never applied)."""
        try:
            with self._subscription(dirname) as sub:
                return sub.state.position()
        except FileNotFoundError:
            return None

    def cache_get(self, dirname: str, entry: ManifestEntry) -> Path | None:
        """The verified cache's copy of ``entry`` (None without a cache or a copy)."""
        return None if self.cache is None else self.cache.get(dirname, entry)

    # ------------------------------------------------------------------ drift, verify, repair

    def verify(self, dirname: str) -> VerifyResult:
        """Full rehash of a subscription directory against its index and digest; names every drifted file."""
        with self._subscription(dirname) as sub:
            self._recover_locked(sub)
            return scan(sub, rehash=True)

    def check(self, dirname: str) -> VerifyResult:
        """Quick drift scan: rehash only files whose size, inode or mtime differ from the index.

        A local edit that keeps size and mtime is only caught by :meth:`verify`.
        """
        with self._subscription(dirname) as sub:
            return scan(sub, rehash=False)

    def repair(self, dirname: str, drift: list[DriftItem]) -> RepairResult:
        """Undo local drift: delete added entries, restore changed/missing files from the verified cache.

        Files with no (valid) cached copy are returned in ``resend`` for the daemon to request.
        """
        result = RepairResult()
        with (
            self._subscription(dirname) as sub,
            fsops.DirTree(sub.fd, mode=self.modes.dir_mode, uid=self.uid, gid=self.gid) as tree,
        ):
            for item in (d for d in drift if d.kind == "added"):
                parent_fd, name = tree.parent_of(item.path, create=False)
                if parent_fd is not None and sub.state.lookup(item.path) is None:
                    fsops.remove_tree_at(parent_fd, name, item.path, result.removed)
                    fsops.prune_empty_parents(tree, item.path)
            opts = self._write_options(len(drift))
            repair_fd = sub.staging_fd(create=True)
            assert repair_fd is not None
            try:
                for item in (d for d in drift if d.kind != "added"):
                    known = sub.state.lookup(item.path)
                    if known is None:
                        continue
                    if self._restore(sub, tree, repair_fd, known.entry(), opts):
                        result.repaired.append(item.path)
                    else:
                        result.resend.append(item.path)
            finally:
                os.close(repair_fd)
            if result.repaired or result.removed:
                fsops.syncfs(sub.fd)
        log.info(
            "share repair",
            extra={
                "dirname": dirname,
                "repaired": len(result.repaired),
                "removed": len(result.removed),
                "resend": len(result.resend),
            },
        )
        return result

    def _restore(
        self, sub: Subscription, tree: fsops.DirTree, tmp_fd: int, entry: ManifestEntry, opts: _WriteOptions
    ) -> bool:
        cached = self.cache_get(sub.dirname, entry)
        if cached is None:
            return False
        tmp = f"repair.{entry.sha256}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=tmp_fd)
        with open(cached, "rb") as src:
            try:
                self._write_entry(tmp_fd, tmp, entry, EntryReader(src, [(entry.path, entry.size)]), opts)
            except (FileDigestMismatchError, PayloadTooShortError):
                cached.unlink()  # a damaged cache entry is never used again
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=tmp_fd)
                return False
        staged = tmp
        parent_fd, name = tree.parent_of(entry.path, create=True)
        assert parent_fd is not None
        st = fsops.lstat_at(parent_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            fsops.remove_tree_at(parent_fd, name, entry.path, [])
        os.rename(staged, name, src_dir_fd=tmp_fd, dst_dir_fd=parent_fd)
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        sub.state.update_stat([(entry.path, st.st_ino, st.st_mtime_ns)])
        return True

    # ------------------------------------------------------------------ revocation

    def purge(self, dirname: str) -> PurgeResult:
        """Revocation: delete the whole subscription directory (links never followed) and its cache.

        Refuses a directory that carries no marker of ours. Returns what was deleted for the
        signed deletion receipt.
        """
        dirname = self._checked_dirname(dirname)
        root_fd = self._open_root()
        try:
            if fsops.lstat_at(root_fd, dirname) is None:
                return PurgeResult(dirname, False, None, [], [])
        finally:
            os.close(root_fd)
        with self._subscription(dirname) as sub:
            position = sub.state.position()
            files = [f.entry() for f in sub.state.files()]
            removed: list[str] = []
            fsops.remove_tree_at(sub.root_fd, dirname, dirname, removed)
            os.fsync(sub.root_fd)
        known = {f.path for f in files}
        prefix = dirname + "/"
        others = [
            p[len(prefix) :]
            for p in removed
            if p[len(prefix) :] not in known and not p.startswith(prefix + META_DIRNAME + "/")
        ]
        if self.cache is not None:
            self.cache.drop(dirname)
        log.warning("share purged", extra={"dirname": dirname, "files": len(files), "others": len(others)})
        return PurgeResult(dirname, True, position, files, others)
