"""Row checks on every core (connectors/stores/tables/rowcheck.py).

Tasks are made small here (``TASK_ROWS`` patched) so that a few hundred rows already spread
over real workers; the results must be exactly those of checking in one process: the same
digest, the same first rejection (key, column, payload line), nothing applied. Each test runs
both ways: in threads (the C fast path, protocol/fastrows.py, the common case) and in worker
processes (the Python checks, used for columns C does not check, e.g. FLOAT; forced here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.stores.tables import TableStore, rowcheck
from connectors.stores.tables.errors import PayloadMalformed, RowRejected
from connectors.stores.tables.schema import schema_to_json
from protocol.canonical import columns_from_schema, encode_record, iter_raw_batches
from protocol.digest import digest_of, row_item
from tests.tables_helpers import STAFF_SCHEMA, Source, staff_row, stream, table_contents

COLUMNS = columns_from_schema(STAFF_SCHEMA)
KEYS = [i for i, c in enumerate(COLUMNS) if c.primary_key]


@pytest.fixture(params=["threads", "processes"])
def small_tasks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Tasks of 40 rows and two workers, so that short payloads use the pool; the workers are
    threads running the C checks, or processes running the Python checks."""
    monkeypatch.setattr(rowcheck, "TASK_ROWS", 40)
    monkeypatch.setenv("EDU_SYNC_CHECK_WORKERS", "2")
    if request.param == "processes":
        monkeypatch.setattr(rowcheck.FastRows, "for_columns", classmethod(lambda cls, columns: None))
    rowcheck.shutdown_pool()  # so that a test shows which pool it used
    yield request.param


def used(path: str) -> bool:
    return (rowcheck._threads if path == "threads" else rowcheck._pool) is not None


def chunked(payload: bytes, size: int = 997) -> list[bytes]:
    """Odd-sized chunks, so that records and UTF-8 characters straddle chunk borders."""
    return [payload[i : i + size] for i in range(0, len(payload), size)]


def run_pipeline(payload: bytes, kind: str, workers: int) -> Any:
    pipeline = rowcheck.RowPipeline(COLUMNS, schema_to_json(COLUMNS), kind, workers=workers)
    try:
        for raw in iter_raw_batches(chunked(payload)):
            pipeline.submit(raw)
        return pipeline.finish()
    finally:
        pipeline.close()


def test_workers_compute_the_digest_of_one_process(small_tasks: str) -> None:
    rows = [staff_row(i) for i in range(500)]
    payload = b"".join(encode_record("U", r) for r in rows)
    expected = digest_of(row_item(r, KEYS) for r in rows)
    in_workers = run_pipeline(payload, "snapshot", workers=2)
    assert used(small_tasks), "the pool was never used: the test proves nothing"
    assert in_workers == expected
    assert run_pipeline(payload, "snapshot", workers=0) == expected


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=0, max_size=300, unique=True))
def test_any_row_set_hashes_the_same_in_workers(keys: list[int]) -> None:
    rows = [staff_row(i, variant=i % 3) for i in keys]
    payload = b"".join(encode_record("U", r) for r in rows)
    original = rowcheck.TASK_ROWS
    rowcheck.TASK_ROWS = 25
    try:
        assert run_pipeline(payload, "snapshot", workers=2) == digest_of(row_item(r, KEYS) for r in rows)
    finally:
        rowcheck.TASK_ROWS = original


def test_a_bad_row_in_a_worker_task_is_named(small_tasks: str) -> None:
    rows = [staff_row(i) for i in range(300)]
    rows[217][6] = "2026-11-01T13:15:36"  # UPDATETIME breaks its declared format
    rows[250][1] = None  # and a later NOT NULL violation: the first one in payload order wins
    payload = b"".join(encode_record("U", r) for r in rows)
    with pytest.raises(RowRejected) as info:
        run_pipeline(payload, "snapshot", workers=2)
    assert used(small_tasks)
    assert info.value.key == [rows[217][0]]
    assert info.value.column == "UPDATETIME"
    assert info.value.line is not None and info.value.line > 217  # values hold newlines: lines > rows


def test_a_key_twice_in_a_delta_across_tasks_is_refused(small_tasks: str) -> None:
    rows = [staff_row(i) for i in range(200)]
    payload = b"".join(encode_record("U", r) for r in rows) + encode_record("U", staff_row(3, variant=1))
    with pytest.raises(PayloadMalformed, match=r"T000003.*twice"):
        run_pipeline(payload, "delta", workers=2)


class _BrokenPool:
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise BrokenProcessPool("worker killed")


def test_a_broken_pool_falls_back_to_checking_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rowcheck, "TASK_ROWS", 40)
    monkeypatch.setattr(rowcheck.FastRows, "for_columns", classmethod(lambda cls, columns: None))
    monkeypatch.setattr(rowcheck, "_shared_pool", lambda workers: _BrokenPool())
    monkeypatch.setattr(rowcheck, "_pool_off", None)
    rows = [staff_row(i) for i in range(200)]
    payload = b"".join(encode_record("U", r) for r in rows)
    with caplog.at_level(logging.WARNING, logger=rowcheck.__name__):
        digest = run_pipeline(payload, "snapshot", workers=2)
    assert digest == digest_of(row_item(r, KEYS) for r in rows)
    assert "workers failed" in caplog.text
    rows[150][3] = "1990-02-30"  # checked here too, never skipped
    with pytest.raises(RowRejected, match="CSRQ"):
        run_pipeline(b"".join(encode_record("U", r) for r in rows), "snapshot", workers=2)


def test_store_applies_large_packages_through_workers(small_tasks: str, db_url: str) -> None:
    """Snapshot, delta and verify on every database with the pool in use (driver values of
    each database cross to the workers); a bad row late in the payload rejects the whole
    package and leaves the table as it was."""
    store = TableStore(db_url)
    try:
        source = Source()
        header, payload = source.snapshot([staff_row(i) for i in range(400)])
        result = store.apply(header, stream(payload), "staff")
        assert result.applied and result.match
        assert table_contents(db_url, "staff", STAFF_SCHEMA) == source.canonical_set()

        before = source.canonical_set()
        bad = Source()
        bad.rows, bad.sequence = dict(source.rows), source.sequence
        upserts = [staff_row(i, variant=2) for i in range(0, 400, 3)]
        upserts[-1][4] = "12.345"  # NUMBER(10,2) with three decimals: in the last worker task
        header, payload = bad.delta(upserts, deletes=[(f"T{i:06d}",) for i in range(1, 400, 6)])
        with pytest.raises(RowRejected) as info:
            store.apply(header, stream(payload), "staff")
        assert info.value.column == "GZ" and info.value.key == [upserts[-1][0]]
        assert table_contents(db_url, "staff", STAFF_SCHEMA) == before
        assert store.position(source.subscription).sequence == 1  # type: ignore[union-attr]

        header, payload = source.delta(
            [staff_row(i, variant=2) for i in range(0, 450, 3)],
            deletes=[(f"T{i:06d}",) for i in range(1, 400, 6)],
        )
        result = store.apply(header, stream(payload), "staff")
        assert result.applied and result.match  # old rows were canonicalised and hashed in workers
        assert table_contents(db_url, "staff", STAFF_SCHEMA) == source.canonical_set()
        verified = store.verify(source.subscription)  # the whole table, hashed in workers
        assert verified.match and verified.matches_expected and verified.rows == len(source.rows)
    finally:
        store.close()
