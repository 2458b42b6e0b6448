"""Reading exact byte counts from the decrypted payload, whatever shape it arrives in."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

Plaintext = BinaryIO | Iterable[bytes]


class PayloadReader:
    """``read(n)`` over a binary file object or an iterator of byte chunks."""

    def __init__(self, source: Plaintext) -> None:
        read = getattr(source, "read", None)
        self._read = read if callable(read) else None
        self._chunks: Iterator[bytes] | None = None if self._read else iter(source)
        self._buf = memoryview(b"")
        self.consumed = 0

    def read(self, n: int) -> memoryview:
        """Up to ``n`` bytes; empty only at the end of the payload."""
        if not self._buf:
            if self._read is not None:
                data = self._read(n)
                self.consumed += len(data)
                return memoryview(data)
            assert self._chunks is not None
            for chunk in self._chunks:
                if chunk:
                    self._buf = memoryview(chunk)
                    break
            else:
                return memoryview(b"")
        out = self._buf[:n]
        self._buf = self._buf[n:]
        self.consumed += len(out)
        return out

    def at_end(self) -> bool:
        """True if no byte is left (reads one chunk ahead if needed)."""
        if self._buf:
            return False
        if self._read is not None:
            extra = self._read(1)
            if extra:
                self._buf = memoryview(extra)
            return not extra
        assert self._chunks is not None
        for chunk in self._chunks:
            if chunk:
                self._buf = memoryview(chunk)
                return False
        return True
