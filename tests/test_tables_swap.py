"""Snapshots swap in atomically: a concurrent reader never sees the table half-loaded, empty or
missing; and MariaDB's non-transactional swap recovers from a crash between its steps."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from connectors.stores.tables import TableStore
from tests.tables_helpers import Source, staff_row, stream, table_contents

TABLE = "swap_staff"


def test_concurrent_reader_never_sees_a_partial_table(db_url: str) -> None:
    store = TableStore(db_url)
    source = Source()
    sizes = [3000, 1500, 4500, 2000]
    store.apply(*_snapshot(source, sizes[0]), TABLE)  # type: ignore[arg-type]
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        engine = sa.create_engine(db_url)
        q = engine.dialect.identifier_preparer.quote_identifier
        try:
            while not stop.is_set():
                with engine.connect() as conn:
                    count = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {q(TABLE)}").scalar()
                seen.append(int(count or 0))
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for size in sizes[1:]:
            result = store.apply(*_snapshot(source, size), TABLE)  # type: ignore[arg-type]
            assert result.applied
    finally:
        stop.set()
        thread.join()
        store.close()
    assert not errors, errors
    assert len(seen) > 10
    assert set(seen) <= set(sizes), f"reader saw partial tables: {sorted(set(seen) - set(sizes))}"
    assert table_contents(db_url, TABLE, source.schema) == source.canonical_set()


def _snapshot(source: Source, size: int) -> tuple[object, object]:
    header, payload = source.snapshot([staff_row(i, size) for i in range(size)])
    return header, stream(payload)


class _Crash(Exception):
    """Stands in for the process dying at a chosen point."""


@pytest.mark.parametrize("point", ["before_rename", "after_rename"])
def test_mariadb_swap_recovers_after_a_crash_between_steps(mysql_url: str, point: str) -> None:
    store = TableStore(mysql_url)
    source = Source()
    store.apply(*_snapshot(source, 50), TABLE)  # type: ignore[arg-type]
    old_state = source.canonical_set()
    header, payload = _snapshot(source, 80)
    real_swap = store.dialect.rename_swap

    def crashing_swap(*args: object, **kwargs: object) -> None:
        if point == "after_rename":
            real_swap(*args, **kwargs)  # type: ignore[arg-type]
        raise _Crash(point)

    store.dialect.rename_swap = crashing_swap  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        store.apply(header, payload, TABLE)  # type: ignore[arg-type]
    store.close()

    restarted = TableStore(mysql_url)
    try:
        actions = restarted.recover()
        assert len(actions) == 1
        position = restarted.position(source.subscription)
        assert position is not None
        if point == "before_rename":
            assert "undid" in actions[0] and position.sequence == 1
            assert table_contents(mysql_url, TABLE, source.schema) == old_state
            payload.seek(0)  # type: ignore[attr-defined]
            assert restarted.apply(header, payload, TABLE).applied  # type: ignore[arg-type]
        else:
            assert "finished" in actions[0] and position.sequence == 2
        assert table_contents(mysql_url, TABLE, source.schema) == source.canonical_set()
        assert restarted.verify(source.subscription).match
        engine = sa.create_engine(mysql_url)
        with engine.connect() as conn:
            leftovers = [
                t for t in sa.inspect(conn).get_table_names() if t.startswith("edu_sync_") and "_" in t[9:]
            ]
        engine.dispose()
        assert sorted(leftovers) == [], leftovers
    finally:
        restarted.close()
