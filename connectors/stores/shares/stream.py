"""Reading exact byte counts from the decrypted payload, whatever shape it arrives in.

The payload is produced by decryption and decompression, and consumed by hashing and
writing; with ``prefetch`` a producer thread runs the first pair while the caller runs
the second (the heavy parts release the GIL), through a small bounded queue, so
memory stays bounded by ``depth`` blocks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import BinaryIO

Plaintext = BinaryIO | Iterable[bytes]
BLOCK = 1 << 20
_END = object()


def _chunks(source: Plaintext, block: int) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if callable(read):
        while data := read(block):
            yield data
    else:
        yield from source


class _Prefetch:
    """Pulls chunks from ``source`` in a thread into a bounded queue."""

    def __init__(self, chunks: Iterator[bytes], depth: int) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(chunks,), name="payload-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                if chunk and not self._put(chunk):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class PayloadReader:
    """``read(n)`` over a binary file object or an iterator of byte chunks."""

    def __init__(self, source: Plaintext, *, prefetch: bool = False, depth: int = 8) -> None:
        chunks = _chunks(source, BLOCK)
        self._prefetch = _Prefetch(chunks, depth) if prefetch else None
        self._chunks: Iterator[bytes] = iter(self._prefetch) if self._prefetch else chunks
        self._buf = memoryview(b"")
        self.consumed = 0

    def read(self, n: int) -> memoryview:
        """Up to ``n`` bytes; empty only at the end of the payload."""
        if not self._buf:
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
        for chunk in self._chunks:
            if chunk:
                self._buf = memoryview(chunk)
                return False
        return True

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()

    def __enter__(self) -> PayloadReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
