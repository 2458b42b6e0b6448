"""The exchange directory as a local directory: the demo, tests, and sites where the platform
mounts a share on the front-end machine.

Same semantics as SFTP: writers rename complete files into place (``put`` here does too), so
listing never shows a partial file. Symbolic links are neither listed nor followed, so nothing
outside the exchange root is ever read or written through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath

from connectors.transports.base import (
    DEFAULT_MAX_READ,
    CheckResult,
    Progress,
    RemoteEntry,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    Transport,
    TransportError,
    is_listed,
    partial_size,
    remote_path,
    temporary_name,
)

_BLOCK = 1024 * 1024


class LocalTransport(Transport):
    """An exchange root on a local (or locally mounted) filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.description = f"local directory {self.root}"

    def _error(self, remote: str, exc: OSError) -> TransportError:
        if isinstance(exc, FileNotFoundError):
            return RemoteFileNotFound(f"{remote}: no such file or directory in {self.description}")
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return TransportError(f"{remote}: refusing a symbolic link in {self.description}")
        return TransportError(f"{remote}: {exc.strerror} in {self.description}")

    def _open_dir(self, remote: str, rel: PurePosixPath) -> int:
        """A descriptor of ``rel``'s parent, reached without following any symlink below the root."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransportError(f"{self.description}: {exc.strerror}") from exc
        try:
            for part in rel.parts[:-1]:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except OSError as exc:
            os.close(fd)
            raise self._error(remote, exc) from exc
        return fd

    def _open_in_root(self, remote: str, flags: int) -> int:
        rel = remote_path(remote)
        dir_fd = self._open_dir(remote, rel)
        try:
            return os.open(rel.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            raise self._error(remote, exc) from exc
        finally:
            os.close(dir_fd)

    def listdir(self, directory: str) -> list[RemoteEntry]:
        fd = self._open_in_root(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as it:
                entries = [
                    RemoteEntry(e.name, st.st_size, st.st_mtime)
                    for e in it
                    if is_listed(e.name) and stat.S_ISREG((st := e.stat(follow_symlinks=False)).st_mode)
                ]
        except OSError as exc:
            raise self._error(directory, exc) from exc
        finally:
            os.close(fd)
        return sorted(entries, key=lambda e: e.name)

    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> int:
        src = self._open_in_root(remote, os.O_RDONLY)
        try:
            size = os.fstat(src).st_size
            offset = partial_size(local)
            if offset > size:  # not a prefix of this file: start over
                offset = 0
                local.unlink()
            with local.open("ab") as out:
                os.lseek(src, offset, os.SEEK_SET)
                while offset < size:
                    data = os.read(src, min(_BLOCK, size - offset))
                    if not data:
                        raise TransportError(f"{remote}: file shrank while being read ({offset} of {size})")
                    out.write(data)
                    offset += len(data)
                    if progress is not None:
                        progress(offset, size)
        finally:
            os.close(src)
        done = partial_size(local)
        if done != size:
            raise TransportError(f"{remote}: fetched {done} bytes, expected {size}")
        return size

    def read(self, remote: str, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        fd = self._open_in_root(remote, os.O_RDONLY)
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise RemoteFileTooLarge(
                    f"{remote}: {size} bytes, more than the {max_bytes} a control file may have"
                )
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RemoteFileTooLarge(f"{remote}: more than a control file's {max_bytes} bytes")
        return data

    def put(self, local: Path, remote: str) -> None:
        target = remote_path(remote)
        tmp = temporary_name(target).name
        dir_fd = self._open_dir(remote, target)
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640, dir_fd=dir_fd
            )
            try:
                with os.fdopen(fd, "wb") as out, local.open("rb") as src:
                    while block := src.read(_BLOCK):
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
            os.fsync(dir_fd)  # the rename itself survives a power cut
        except OSError as exc:
            raise self._error(remote, exc) from exc
        finally:
            os.close(dir_fd)

    def check(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        for directory in ("inbox", "control"):
            try:
                count = len(self.listdir(directory))
                results.append(CheckResult(f"{self.description}: {directory}/", True, f"{count} files"))
            except TransportError as exc:
                results.append(CheckResult(f"{self.description}: {directory}/", False, str(exc)))
        probe = temporary_name(PurePosixPath("outbox/edu-agent-check"))
        item = f"{self.description}: outbox/"
        try:
            dir_fd = self._open_dir(str(probe), probe)
            try:
                os.close(
                    os.open(
                        probe.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
                    )
                )
                os.unlink(probe.name, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
            results.append(CheckResult(item, True, "writable"))
        except (OSError, TransportError) as exc:
            detail = str(exc) if isinstance(exc, TransportError) else f"not writable: {exc.strerror}"
            results.append(CheckResult(item, False, detail))
        return results

    def close(self) -> None:
        """Nothing to release."""
