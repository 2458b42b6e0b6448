"""File-set digest: the table digest's additive construction over (path, size, SHA-256).

An additive (LtHash-style) digest lets the agent update the set's digest from
what a package changes, without rehashing every file, and lets the hub and the
agent compute the same value independently.

Item encoding (exact bytes hashed into the digest for one file)::

    b"file\\x00" + UTF-8 path + b"\\x00" + decimal size + b"\\x00" + lowercase hex SHA-256

Paths never contain NUL (see paths.py), so the encoding is unambiguous.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from connectors.stores.shares.manifest import ManifestEntry


class _Item(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


def file_item(path: str, size: int, sha256: str) -> bytes:
    """The bytes one file contributes to the file-set digest."""
    return b"\x00".join((b"file", path.encode("utf-8"), str(size).encode("ascii"), sha256.encode("ascii")))


class FileSetDigest:
    """Mutable file-set digest: add and remove files, read the hex value."""

    def __init__(self, hex_value: str | None = None) -> None:
        from protocol import digest as _digest  # lands with the table issue
        self._d = _digest.SetDigest() if hex_value is None else _digest.SetDigest.from_hex(hex_value)

    def add(self, item: _Item) -> None:
        self._d.add(file_item(item.path, item.size, item.sha256))

    def remove(self, item: _Item) -> None:
        self._d.remove(file_item(item.path, item.size, item.sha256))

    def hexdigest(self) -> str:
        return self._d.hexdigest()


def fileset_digest(entries: Iterable[ManifestEntry] | Iterable[_Item]) -> str:
    """The digest of a whole file set."""
    d = FileSetDigest()
    for entry in entries:
        d.add(entry)
    return d.hexdigest()


def is_digest(value: object) -> bool:
    """Whether ``value`` has the shape of a file-set digest in hex."""
    from protocol import digest as _digest

    return isinstance(value, str) and _digest.is_hex_digest(value)
