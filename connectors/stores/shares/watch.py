"""DriftWatcher: notice local changes to a subscription directory and report them.

inotify (through watchdog) when it can; periodic scanning when the share is a
network filesystem (inotify sees only changes made through this host's kernel)
or when inotify limits are reached. The mode in use is logged and exposed as
:attr:`DriftWatcher.mode` / :attr:`DriftWatcher.reason` for status output.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from connectors.stores.shares.paths import META_DIRNAME
from connectors.stores.shares.results import DriftItem
from connectors.stores.shares.store import ShareStore

log = logging.getLogger(__name__)

#: Filesystem types on which inotify misses changes made by other hosts.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "beegfs",
        "orangefs",
        "pvfs2",
        "sshfs",
    }
)
#: FUSE types that are local block filesystems (inotify works).
LOCAL_FUSE_TYPES = frozenset({"fuseblk", "fuse.fuse-overlayfs", "fuse.ntfs-3g"})
_INOTIFY_LIMIT_ERRNOS = (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM)
_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})


def _unescape_mount(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def filesystem_type(path: str | os.PathLike[str], mountinfo: str = "/proc/self/mountinfo") -> str:
    """The filesystem type holding ``path``: the mount whose device matches, else the longest prefix."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    real = os.path.realpath(path)
    by_dev: str | None = None
    best: tuple[int, str] = (-1, "unknown")
    with open(mountinfo, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            left, sep, right = line.partition(" - ")
            fields = left.split()
            if not sep or len(fields) < 5:
                continue
            fstype = right.split()[0]
            mount_point = _unescape_mount(fields[4])
            if fields[2] == dev:
                by_dev = fstype
            if (real == mount_point or real.startswith(mount_point.rstrip("/") + "/")) and len(
                mount_point
            ) > best[0]:
                best = (len(mount_point), fstype)
    return by_dev or best[1]


def is_network_fs(fstype: str) -> bool:
    if fstype in LOCAL_FUSE_TYPES:
        return False
    return (
        fstype in NETWORK_FS_TYPES or fstype.split(".")[0] in NETWORK_FS_TYPES or fstype.startswith("fuse.")
    )


@dataclass(frozen=True)
class DriftReport:
    """Drift found in one subscription directory."""

    dirname: str
    mode: str
    items: list[DriftItem]


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: DriftWatcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENTS:
            return
        self._watcher.notify(os.fsdecode(event.src_path))


class DriftWatcher:
    """Watches one subscription directory; calls ``on_drift`` with each non-empty drift report."""

    def __init__(
        self,
        store: ShareStore,
        dirname: str,
        on_drift: Callable[[DriftReport], None],
        *,
        debounce: float = 2.0,
        poll_interval: float = 300.0,
        safety_interval: float = 3600.0,
        observer_factory: Callable[[], Any] = Observer,
        mountinfo: str = "/proc/self/mountinfo",
    ) -> None:
        self.store, self.dirname, self.on_drift = store, dirname, on_drift
        self.debounce, self.poll_interval, self.safety_interval = debounce, poll_interval, safety_interval
        self._observer_factory = observer_factory
        self._mountinfo = mountinfo
        self.path = Path(store.root) / dirname
        self.mode: str | None = None
        self.reason = ""
        self._meta = str(self.path / META_DIRNAME)
        self._observer: Any = None
        self._wake = threading.Condition()
        self._dirty_since: float | None = None
        self._last_event = 0.0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_report: DriftReport | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        fstype = filesystem_type(self.path, self._mountinfo)
        if is_network_fs(fstype):
            self._use_polling(
                f"{self.path} is on a network filesystem ({fstype}); inotify cannot see remote changes"
            )
        else:
            try:
                observer = self._observer_factory()
                observer.schedule(_Handler(self), str(self.path), recursive=True)
                observer.start()
            except OSError as exc:
                if exc.errno not in _INOTIFY_LIMIT_ERRNOS:
                    raise
                self._use_polling(
                    f"inotify limit reached ({exc.strerror or exc}); raise fs.inotify.max_user_watches"
                )
            else:
                self._observer = observer
                self.mode, self.reason = "inotify", f"inotify on {fstype}"
                log.info(
                    "drift watch mode",
                    extra={"dirname": self.dirname, "mode": self.mode, "reason": self.reason},
                )
        self._thread = threading.Thread(target=self._run, name=f"drift-{self.dirname}", daemon=True)
        self._thread.start()

    def _use_polling(self, reason: str) -> None:
        self.mode, self.reason = "polling", reason
        log.warning(
            "drift watch falls back to periodic scanning",
            extra={
                "dirname": self.dirname,
                "mode": self.mode,
                "reason": reason,
                "interval_s": self.poll_interval,
            },
        )

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self._thread is not None:
            self._thread.join()

    def status(self) -> dict[str, Any]:
        return {"dirname": self.dirname, "mode": self.mode, "reason": self.reason}

    # -- events -----------------------------------------------------------------

    def notify(self, path: str) -> None:
        """An event for ``path``; the agent's own metadata directory is ignored."""
        if path == self._meta or path.startswith(self._meta + os.sep):
            return
        with self._wake:
            now = time.monotonic()
            self._last_event = now
            if self._dirty_since is None:
                self._dirty_since = now
            self._wake.notify_all()

    def _due(self, now: float, next_scan: float) -> tuple[bool, float]:
        """(check now?, seconds to wait otherwise)."""
        if self._dirty_since is not None:
            quiet_at = self._last_event + self.debounce
            latest = self._dirty_since + 10 * self.debounce  # steady churn still gets checked
            at = min(quiet_at, latest)
            if now >= at:
                return True, 0.0
            return False, min(at, next_scan) - now
        if now >= next_scan:
            return True, 0.0
        return False, next_scan - now

    def _run(self) -> None:
        interval = self.poll_interval if self.mode == "polling" else self.safety_interval
        next_scan = time.monotonic() + interval
        while True:
            with self._wake:
                while True:
                    if self._stopping:
                        return
                    due, wait = self._due(time.monotonic(), next_scan)
                    if due:
                        self._dirty_since = None
                        break
                    self._wake.wait(wait)
            next_scan = time.monotonic() + interval
            self.check_now()

    def check_now(self) -> DriftReport | None:
        """Scan once (quick stat scan, rehashing what changed); report and return any drift."""
        try:
            result = self.store.check(self.dirname)
        except Exception:
            log.exception("drift check failed", extra={"dirname": self.dirname})
            return None
        if not result.drift:
            return None
        report = DriftReport(self.dirname, self.mode or "manual", result.drift)
        self.last_report = report
        for item in result.drift:
            log.warning(
                "share drift",
                extra={
                    "dirname": self.dirname,
                    "path": item.path,
                    "kind": item.kind,
                    "expected": item.expected,
                    "found": item.found,
                },
            )
        self.on_drift(report)
        return report
