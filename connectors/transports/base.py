"""The one interface the agent uses to reach the platform's exchange directory.

Paths are relative to the exchange root the platform gives this agent (its SFTP chroot, or a
local directory): ``inbox/<package>``, ``control/<file>``, ``outbox/<report>``. Names that begin
with ``.`` are in-flight temporaries of a writer (temp name + rename) and are never listed, so a
reader never sees a partial file.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

from protocol.layout import temp_name

# A control file (subscription list, keys, revocations) is small; a bigger one is refused
# rather than read into memory.
DEFAULT_MAX_READ = 16 * 1024 * 1024

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, total)`` while a fetch advances."""

_NAME = re.compile(r"^[^/\\\x00-\x1f]+$")


class TransportError(Exception):
    """The platform's exchange directory could not be used; the message says why."""


class TransportUnavailable(TransportError):
    """The platform could not be reached, even after retrying with backoff."""


class HostKeyError(TransportError):
    """The server's host key is not the pinned one (or none is pinned): never connect."""


class AuthenticationFailed(TransportError):
    """The server refused the agent's key."""


class RemoteFileNotFound(TransportError, FileNotFoundError):
    """The named file does not exist in the exchange directory."""


class RemoteFileTooLarge(TransportError):
    """A control file exceeds the size a control file may have."""


@dataclass(frozen=True)
class RemoteEntry:
    """One regular file in an exchange subdirectory."""

    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class CheckResult:
    """One line of ``config check --online``: what was tried, whether it worked, and why not."""

    item: str
    ok: bool
    detail: str


def remote_path(path: str) -> PurePosixPath:
    """Validate an exchange-relative path: no absolute paths, no ``.``/``..``, no control characters."""
    parts = path.split("/")
    if any(p in ("", ".", "..") or not _NAME.match(p) for p in parts):
        raise TransportError(f"invalid exchange path {path!r}: expected e.g. 'inbox/NAME', no '..'")
    return PurePosixPath(*parts)


def is_listed(name: str) -> bool:
    """Dot names are writers' temporaries (or hidden files): not part of the exchange."""
    return not name.startswith(".")


def temporary_name(path: PurePosixPath) -> PurePosixPath:
    """Where an upload is written before its rename: the protocol's temporary name beside the
    target (``.<name>.<random>.tmp``, unique per try), which every reader skips."""
    return path.with_name(temp_name(path.name))


def partial_size(local: Path) -> int:
    """Bytes already downloaded into ``local`` (a fetch resumes from there)."""
    try:
        return local.stat().st_size
    except FileNotFoundError:
        return 0


class Transport(ABC):
    """Reach the exchange directory: list and fetch from it, read control files, put to outbox.

    ``fetch`` resumes: if ``local`` already holds a prefix of the remote file (an earlier try
    broke off), only the rest is transferred; the final size is verified (the package signature
    check later catches content). ``put`` is atomic: the file appears under its name complete,
    or not at all. Implementations retry broken connections themselves (bounded backoff) and
    raise :class:`TransportError` subclasses with a specific message otherwise. One instance
    serves one thread at a time (it holds one connection).
    """

    description: str

    @abstractmethod
    def listdir(self, directory: str) -> list[RemoteEntry]:
        """Regular, complete files in ``directory`` (e.g. ``"inbox"``), sorted by name."""

    @abstractmethod
    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> int:
        """Download ``remote`` into ``local`` (resuming a partial one); return its size."""

    @abstractmethod
    def read(self, remote: str, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        """The whole content of a small file (a control file)."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Upload ``local`` as ``remote`` via a temporary name and a rename."""

    @abstractmethod
    def check(self) -> list[CheckResult]:
        """Try the connection and each exchange directory; for ``config check --online``."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (safe to call twice)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
