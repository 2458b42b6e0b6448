"""The decrypted payload, cut into the manifest's entries and hashed, ahead of the writer.

The payload is produced by decryption and decompression; each entry's bytes are then
hashed (SHA-256) and written. :class:`EntryReader` does the cutting and the hashing on the
producer side, so with ``prefetch`` one thread decrypts and decompresses, a second cuts and
hashes, and the caller only writes (hashlib, AES-GCM, zstd and ``os.write`` all release the
GIL; the two SHA-256-bound and AES/zstd-bound halves then run on two cores). Memory stays
bounded: each thread runs at most ``depth`` source blocks (1 MiB each) ahead.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Generic, TypeVar

from connectors.stores.shares.errors import PayloadTooLongError, PayloadTooShortError

Plaintext = BinaryIO | Iterable[bytes]
BLOCK = 1 << 20
_END = object()
T = TypeVar("T")

# One piece of an entry's content; the last piece of an entry carries its SHA-256 hex.
Piece = tuple[memoryview, str | None]


def _chunks(source: Plaintext, block: int) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if callable(read):
        while data := read(block):
            yield data
    else:
        yield from source


def _split(chunks: Iterator[bytes], entries: Sequence[tuple[str, int]]) -> Iterator[list[Piece]]:
    """Cut ``chunks`` at the entry sizes and hash each entry: one list of pieces per source chunk.

    Raises :class:`PayloadTooShortError` (naming the entry) when the payload ends early and
    :class:`PayloadTooLongError` when a byte follows the last entry.
    """
    view = memoryview(b"")
    batch: list[Piece] = []
    total = 0
    for path, size in entries:
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            if not view:
                if batch:
                    yield batch
                    batch = []
                chunk = next((c for c in chunks if c), None)
                if chunk is None:
                    raise PayloadTooShortError(
                        f"payload ended {size - remaining} bytes into {path!r} ({size} bytes declared)"
                    )
                view = memoryview(chunk)
            piece = view[: min(remaining, BLOCK)]
            view = view[len(piece) :]
            digest.update(piece)
            remaining -= len(piece)
            batch.append((piece, None if remaining else digest.hexdigest()))
        if not size:
            batch.append((memoryview(b""), digest.hexdigest()))
        total += size
    if batch:
        yield batch
    if view or next((c for c in chunks if c), None) is not None:
        raise PayloadTooLongError(
            f"the payload continues after the {len(entries)} declared entries "
            f"({total} bytes): undeclared content"
        )


class _Prefetch(Generic[T]):
    """Pulls items from ``items`` in a thread into a bounded queue."""

    def __init__(self, items: Iterator[T], depth: int, name: str) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]  # only the producer's items and the markers above

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class EntryReader:
    """The payload as a sequence of entries: ``blocks()`` yields the next one's bytes, then ``digest``.

    ``entries`` are (path, size) in payload order. After ``blocks()`` is exhausted,
    ``digest`` is the SHA-256 hex of exactly the bytes it yielded. ``finish()`` checks that
    nothing follows the last entry. Errors of the source (authentication, decompression) and
    of the cutting (short or long payload) are raised in the caller's thread, at the point
    it reaches them.
    """

    def __init__(
        self, source: Plaintext, entries: Sequence[tuple[str, int]], *, prefetch: bool = False, depth: int = 4
    ) -> None:
        self._stages: list[_Prefetch[Any]] = []
        chunks = _chunks(source, BLOCK)
        if prefetch:  # one thread decrypts and decompresses, the next cuts and hashes
            self._stages.append(_Prefetch(chunks, depth, "payload-decrypt"))
            chunks = iter(self._stages[-1])
        batches = _split(chunks, entries)
        if prefetch:
            self._stages.append(_Prefetch(batches, depth, "payload-hash"))
            batches = iter(self._stages[-1])
        self._batches: Iterator[list[Piece]] = batches
        self._pending: Iterator[Piece] = iter(())
        self.digest: str | None = None

    def _next_piece(self) -> Piece | None:
        while True:
            piece = next(self._pending, None)
            if piece is not None:
                return piece
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._pending = iter(batch)

    def blocks(self) -> Iterator[memoryview]:
        """The next entry's bytes, in pieces of at most ``BLOCK``; sets ``digest`` at its end."""
        self.digest = None
        while (item := self._next_piece()) is not None:
            piece, digest = item
            if piece:
                yield piece
            if digest is not None:
                self.digest = digest
                return
        raise AssertionError("blocks() called past the last entry")  # _split raises on a short payload

    def skip(self) -> str:
        """Read past the next entry; its SHA-256 hex."""
        for _ in self.blocks():
            pass
        assert self.digest is not None
        return self.digest

    def finish(self) -> None:
        """Raise :class:`PayloadTooLongError` if any byte follows the last entry."""
        if self._next_piece() is not None:
            raise AssertionError("a piece beyond the declared entries")  # _split raises first

    def close(self) -> None:
        for stage in reversed(self._stages):  # the consumer of a stage first, so none waits on a stopped one
            stage.close()

    def __enter__(self) -> EntryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
