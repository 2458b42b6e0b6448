"""LtHash-style bucketed digests: order independence, incremental updates, summaries."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.digest import (
    ALGORITHM,
    BATCH,
    BUCKETS,
    LANES,
    DigestError,
    LtHash,
    bucket_of,
    check_summary,
    digest_of,
    file_item,
    item_lanes,
    mismatched_buckets,
    row_item,
)


def rows(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [row_item([str(i), f"张三{i}", None, ""], [0]) for i in range(start, start + n)]


def test_lanes_are_the_sum_mod_2_16_of_item_lanes() -> None:
    """The definition, checked against a naive implementation."""
    pairs = rows(50)
    digest = digest_of(pairs)
    naive = np.zeros(LANES, dtype=np.int64)
    per_bucket = np.zeros((BUCKETS, LANES), dtype=np.int64)
    for key, item in pairs:
        lanes = item_lanes(item).astype(np.int64)
        naive += lanes
        per_bucket[bucket_of(key)] += lanes
    assert np.array_equal(digest.overall(), (naive % 65536).astype(np.uint16))
    assert np.array_equal(digest.lanes, (per_bucket % 65536).astype(np.uint16))
    assert digest.rows == 50
    assert item_lanes(b"x").shape == (LANES,)


def test_order_independent_and_batch_independent() -> None:
    pairs = rows(BATCH + 500)
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    assert digest_of(pairs) == digest_of(shuffled)
    one_by_one = LtHash()
    for key, item in pairs[:300]:
        one_by_one.add([key], [item])
    assert one_by_one == digest_of(pairs[:300])


def test_incremental_update_equals_recomputation() -> None:
    base = rows(1000)
    digest = digest_of(base)
    # update row 5, delete row 7, insert row 2000
    old5, old7 = base[5], base[7]
    new5 = row_item(["5", "李四", "x", ""], [0])
    digest.remove([old5[0], old7[0]], [old5[1], old7[1]])
    digest.add([new5[0], *rows(1, 2000)[0][:1]], [new5[1], rows(1, 2000)[0][1]])
    expected = [p for i, p in enumerate(base) if i not in (5, 7)] + [new5, *rows(1, 2000)]
    assert digest == digest_of(expected)
    assert digest.summary() == digest_of(expected).summary()


def test_combine_and_difference() -> None:
    a, b = digest_of(rows(100)), digest_of(rows(50, 100))
    both = a.combine(b)
    assert both == digest_of(rows(150))
    assert both.difference(b) == a


def test_distinct_sets_differ_and_buckets_localise() -> None:
    pairs = rows(2000)
    reference = digest_of(pairs)
    changed = pairs[:]
    changed[123] = row_item(["123", "张三123", None, None], [0])  # "" became NULL
    local = digest_of(changed)
    assert local != reference
    buckets = mismatched_buckets(local.summary(), reference.summary())
    assert buckets == [bucket_of(pairs[123][0])]
    # a deleted and an inserted row: exactly their two buckets (or one if they collide)
    local = digest_of(pairs[1:] + rows(1, 5000))
    buckets = mismatched_buckets(local.summary(), reference.summary())
    assert sorted(buckets) == sorted({bucket_of(pairs[0][0]), bucket_of(rows(1, 5000)[0][0])})


def test_duplicate_item_is_not_cancelled() -> None:
    """A multiset: the same row twice is not the same as zero times (mod 2^16 needs 65536 copies)."""
    pairs = rows(3)
    assert digest_of(pairs + pairs[:1]) != digest_of(pairs)
    assert digest_of(pairs + pairs[:1]).rows == 4


def test_summary_is_compact_json_and_serialisation_round_trips() -> None:
    digest = digest_of(rows(300))
    summary = digest.summary()
    text = json.dumps(summary)
    assert len(text) < 6000
    assert summary["algorithm"] == ALGORITHM and summary["rows"] == 300
    check_summary(json.loads(text))
    assert mismatched_buckets(json.loads(text), summary) == []
    assert LtHash.from_bytes(digest.to_bytes()) == digest
    with pytest.raises(DigestError):
        LtHash.from_bytes(digest.to_bytes()[:-1])


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"algorithm": "other", "rows": 0, "digest": "", "buckets": [""] * BUCKETS},
        {"algorithm": ALGORITHM, "rows": 0, "digest": "", "buckets": [""] * 3},
        {"algorithm": ALGORITHM, "rows": "0", "digest": "", "buckets": [""] * BUCKETS},
    ],
)
def test_bad_summaries_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(DigestError):
        mismatched_buckets(bad, LtHash().summary())


def test_inconsistent_summary_is_an_error() -> None:
    summary = LtHash().summary()
    forged = dict(summary, rows=5)
    with pytest.raises(DigestError, match="inconsistent"):
        mismatched_buckets(forged, summary)


def test_file_items() -> None:
    a = digest_of([file_item("a/成绩.pdf", 10, "AB" * 32), file_item("b", 0, "00" * 32)])
    b = digest_of([file_item("b", 0, "00" * 32), file_item("a/成绩.pdf", 10, "ab" * 32)])
    assert a == b
    c = digest_of([file_item("b", 0, "00" * 32), file_item("a/成绩.pdf", 11, "ab" * 32)])
    assert mismatched_buckets(c.summary(), a.summary()) == [bucket_of(file_item("a/成绩.pdf", 0, "")[0])]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.text(max_size=5)), max_size=30),
    st.lists(st.integers(0, 40), max_size=10),
)
def test_add_remove_property(items: list[tuple[int, str]], removals: list[int]) -> None:
    """Any sequence of adds and removes equals the digest of the resulting multiset."""
    pairs = [row_item([str(k), v], [0]) for k, v in items]
    digest = digest_of(pairs)
    remaining = list(pairs)
    for index in removals:
        if index < len(remaining):
            key, item = remaining.pop(index)
            digest.remove([key], [item])
    assert digest == digest_of(remaining)
    assert digest.rows == len(remaining)
