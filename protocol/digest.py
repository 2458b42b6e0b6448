"""Order-independent, incrementally maintainable set digests (LtHash, Lewi et al. 2019).

Each item (a table row's canonical encoding, or a file's ``(path, size, sha256)``) is
expanded by the BLAKE3 XOF into 1024 little-endian 16-bit lanes; a set's digest is the
lane-wise sum mod 2^16 (lthash16, n = 1024, the paper's parameters). Adding or removing an
item is one vector addition or subtraction, so a store keeps its digest current in time
proportional to a change, and the hub predicts it with the same code.

Items are also kept apart in 256 *buckets* chosen by a hash of the item's key, so that a
mismatch narrows to the buckets holding the differing keys; the overall digest is the sum
of the buckets. :meth:`LtHash.summary` is the compact JSON form signed in package headers
(``expected_state``); :func:`mismatched_buckets` compares two summaries.

Why BLAKE3: the lanes need a 2048-byte extendable output per item. BLAKE3's XOF has the
same 128-bit security as SHAKE128 (the paper's choice) and is about 1.5x faster here (see
docs/tables.md). The per-row work (two keyed hashes and 1024 lane additions) runs in C
(protocol/csrc/native.c, one call per batch, GIL released); :func:`item_lanes` and
:func:`bucket_of` state the construction in Python, and the tests hold the two together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import blake3
import numpy as np

from protocol import _native
from protocol.canonical import encode_values
from protocol.errors import ProtocolError

LANES = 1024
BUCKETS = 256
ALGORITHM = "lthash16x1024-blake3-b256"
ITEM_BYTES = LANES * 2
BATCH = 4096
"""Rows per call when a stream is hashed (:func:`digest_of`): bounds the rows held."""

_ITEM_KEY = blake3.blake3(b"edu-sync-agent lthash16 item v1").digest()
_BUCKET_KEY = blake3.blake3(b"edu-sync-agent lthash16 bucket v1").digest()
_STATE_MAGIC = b"LTH1"


class DigestError(ProtocolError, ValueError):
    """A serialised digest or summary is malformed or of another algorithm."""


def bucket_of(key: bytes) -> int:
    """The bucket (0..255) of an item key: first byte of a keyed BLAKE3 hash."""
    return blake3.blake3(key, key=_BUCKET_KEY).digest(1)[0]


def hash_keys() -> tuple[bytes, bytes]:
    """The BLAKE3 keys of the item and bucket hashes (for the C fast path)."""
    return _ITEM_KEY, _BUCKET_KEY


def item_lanes(item: bytes) -> np.ndarray:
    """The 1024 lanes of one item (for tests and explanations; batches use :meth:`LtHash.add`)."""
    return np.frombuffer(blake3.blake3(item, key=_ITEM_KEY).digest(ITEM_BYTES), dtype="<u2")


class LtHash:
    """A bucketed lthash16 state: lanes per bucket (256 x 1024 uint16) and row counts."""

    __slots__ = ("counts", "lanes")

    def __init__(self) -> None:
        self.lanes = np.zeros((BUCKETS, LANES), dtype=np.uint16)
        self.counts = np.zeros(BUCKETS, dtype=np.int64)

    # -- updates -------------------------------------------------------------------
    def add(self, keys: Sequence[bytes], items: Sequence[bytes]) -> None:
        """Add items (``items[i]`` has key ``keys[i]``)."""
        self._update(keys, items, +1)

    def remove(self, keys: Sequence[bytes], items: Sequence[bytes]) -> None:
        """Remove items previously added (the inverse of :meth:`add`)."""
        self._update(keys, items, -1)

    def _update(self, keys: Sequence[bytes], items: Sequence[bytes], sign: int) -> None:
        if len(keys) != len(items):
            raise ValueError("keys and items differ in length")
        if items:
            _native.lthash_update(self.lanes, self.counts, keys, items, sign, _ITEM_KEY, _BUCKET_KEY)

    def combine(self, other: LtHash) -> LtHash:
        """A new digest of the union (multiset sum) of both sets."""
        result = self.copy()
        result.lanes += other.lanes
        result.counts += other.counts
        return result

    def difference(self, other: LtHash) -> LtHash:
        """A new digest of this set minus ``other`` (which must be contained in it)."""
        result = self.copy()
        result.lanes -= other.lanes
        result.counts -= other.counts
        return result

    def replace_buckets(self, other: LtHash, buckets: Iterable[int]) -> None:
        """Take ``other``'s lanes and counts for ``buckets`` (a bucket resend); the rest stay."""
        chosen = sorted(set(buckets))
        self.lanes[chosen] = other.lanes[chosen]
        self.counts[chosen] = other.counts[chosen]

    def copy(self) -> LtHash:
        result = LtHash()
        result.lanes[:] = self.lanes
        result.counts[:] = self.counts
        return result

    # -- reading -------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    def overall(self) -> np.ndarray:
        """The set's lthash16: the lane-wise sum of all buckets mod 2^16."""
        return np.add.reduce(self.lanes, axis=0, dtype=np.uint16)

    def bucket_hashes(self) -> list[str]:
        """Short (64-bit) hashes of each bucket's lanes, for the signed summary."""
        data = self.lanes.astype("<u2", copy=False).tobytes()
        return [
            blake3.blake3(data[i * ITEM_BYTES : (i + 1) * ITEM_BYTES]).hexdigest(8) for i in range(BUCKETS)
        ]

    def summary(self) -> dict[str, Any]:
        """Compact JSON form: algorithm, row count, overall digest, per-bucket short hashes."""
        return {
            "algorithm": ALGORITHM,
            "rows": self.rows,
            "digest": blake3.blake3(self.overall().astype("<u2", copy=False).tobytes()).hexdigest(),
            "buckets": self.bucket_hashes(),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LtHash):
            return NotImplemented
        return bool(np.array_equal(self.lanes, other.lanes) and np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]

    # -- persistence ---------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Exact state for the store's state table (about 514 KiB)."""
        return (
            _STATE_MAGIC
            + self.counts.astype("<i8", copy=False).tobytes()
            + self.lanes.astype("<u2", copy=False).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LtHash:
        expected = len(_STATE_MAGIC) + BUCKETS * 8 + BUCKETS * ITEM_BYTES
        if len(data) != expected or not data.startswith(_STATE_MAGIC):
            raise DigestError("not a serialised lthash16 state")
        result = cls()
        offset = len(_STATE_MAGIC)
        result.counts[:] = np.frombuffer(data, dtype="<i8", count=BUCKETS, offset=offset)
        offset += BUCKETS * 8
        result.lanes[:] = np.frombuffer(data, dtype="<u2", offset=offset).reshape(BUCKETS, LANES)
        return result


def check_summary(summary: Mapping[str, Any]) -> None:
    """Raise DigestError unless ``summary`` is a well-formed summary of this algorithm."""
    if not isinstance(summary, Mapping) or summary.get("algorithm") != ALGORITHM:
        raise DigestError(f"digest summary is not {ALGORITHM}")
    buckets = summary.get("buckets")
    if (
        not isinstance(buckets, list)
        or len(buckets) != BUCKETS
        or not all(isinstance(b, str) for b in buckets)
    ):
        raise DigestError(f"digest summary needs {BUCKETS} bucket hashes")
    if not isinstance(summary.get("rows"), int) or not isinstance(summary.get("digest"), str):
        raise DigestError("digest summary needs an integer 'rows' and a string 'digest'")


def mismatched_buckets(local: Mapping[str, Any], expected: Mapping[str, Any]) -> list[int]:
    """Buckets whose hashes differ (empty list = the summaries match)."""
    check_summary(local)
    check_summary(expected)
    differing = [
        i for i, (a, b) in enumerate(zip(local["buckets"], expected["buckets"], strict=True)) if a != b
    ]
    if not differing and (local["digest"] != expected["digest"] or local["rows"] != expected["rows"]):
        raise DigestError("summaries agree on every bucket but not on the overall digest: inconsistent")
    return differing


def summaries_match(local: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    return not mismatched_buckets(local, expected)


# ---------------------------------------------------------------- item encodings


def row_item(values: Sequence[str | None], key_indexes: Sequence[int]) -> tuple[bytes, bytes]:
    """(key, item) of a table row in canonical text form: key columns and the whole row."""
    return (
        encode_values([values[i] for i in key_indexes]).encode("utf-8"),
        encode_values(values).encode("utf-8"),
    )


def file_item(path: str, size: int, sha256_hex: str) -> tuple[bytes, bytes]:
    """(key, item) of a file in a file set: keyed by its relative path."""
    return encode_values([path]).encode("utf-8"), encode_values([path, str(size), sha256_hex.lower()]).encode(
        "utf-8"
    )


def digest_of(pairs: Iterable[tuple[bytes, bytes]]) -> LtHash:
    """A fresh digest of (key, item) pairs, streamed in batches."""
    result = LtHash()
    keys: list[bytes] = []
    items: list[bytes] = []
    for key, item in pairs:
        keys.append(key)
        items.append(item)
        if len(items) >= BATCH:
            result.add(keys, items)
            keys, items = [], []
    result.add(keys, items)
    return result
