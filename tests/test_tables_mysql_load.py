"""MariaDB/MySQL fast path: ``LOAD DATA LOCAL INFILE`` through a FIFO (dialects/mysql.py).

Values survive exactly (hostile text, NULL vs "" vs "NULL", 4-byte characters, longest
values), through snapshots and deltas; every way the statement can end early (LOCAL
refused, an error before the server asks for the rows, an abort with or without rows
sent, a refused row) ends without hanging, leaves no thread and no FIFO behind and
changes nothing; without LOCAL the dialect falls back to INSERT statements and says so.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.stores.tables import PayloadMalformed, TableStore
from connectors.stores.tables.dialects import base as dialect_base
from connectors.stores.tables.dialects import mysql as mysql_dialect
from protocol.canonical import encode_values, quote
from tests.tables_helpers import STAFF_SCHEMA, Source, spy_loaders, staff_row, stream, table_contents

pytestmark = pytest.mark.timeout(300)  # a hang is the failure these tests look for

TABLE = "教职工基本信息"
HOSTILE_SCHEMA: list[dict[str, Any]] = [
    {"name": "ID", "type": "NUMBER(10)", "primary_key": True},
    {"name": "SHORT", "type": "VARCHAR2(20)"},
    {"name": "LONG", "type": "CLOB"},
    {"name": "FLAG", "type": "BOOLEAN"},
    {"name": "BLOB", "type": "BLOB"},
    {"name": "AT", "type": "TIMESTAMP WITH TIME ZONE"},
    {"name": "N", "type": "NUMBER(12,3)"},
    {"name": "OP", "type": "CHAR(1)"},  # the name of the op field in a payload
]
HOSTILE_TEXT = [
    "",
    "NULL",
    "null",
    "\\N",
    '"',
    '""',
    '","',
    '"NULL"',
    ",",
    ",,",
    "a,b",
    'say "hi", then\nleave',
    "\r\n",
    "\n",
    "tab\there",
    "back\\slash\\",
    "\\",
    "'; DROP TABLE x; --",
    "张三,李四",
    "😀🀄️𝄞",
    "\u2028\u0085",
    " lead trail ",
    "😀" * 20,  # 20 four-byte characters: the VARCHAR2(20) limit
]


def hostile_row(i: int, variant: int = 0) -> list[str | None]:
    text = HOSTILE_TEXT[(i + variant) % len(HOSTILE_TEXT)]
    return [
        str(i),
        text if i % 7 else None,
        (text * (1 + i % 3)) if i % 5 else None,
        None if i % 4 == 0 else ("true" if (i + variant) % 2 else "false"),
        None if i % 6 == 0 else "\\x" + bytes([(i + variant) % 256, 0, 34, 44, 10, 92]).hex()[: 2 * (i % 7)],
        None if i % 3 == 0 else f"20{10 + i % 15:02d}-0{1 + i % 9}-01 0{i % 10}:30:00.5+00:00",
        None if i % 8 == 0 else f"{i * 7 % 1000}.{i % 1000:03d}",
        "UD"[(i + variant) % 2],
    ]


@pytest.fixture
def store(mysql_url: str) -> Iterator[TableStore]:
    result = TableStore(mysql_url)
    yield result
    result.close()


@pytest.fixture
def loaders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of snapshot loaders and delta appliers the MySQL dialect hands out."""
    return spy_loaders(monkeypatch, mysql_dialect.MySQLDialect)


def apply(store: TableStore, header: object, payload: bytes, table: str = TABLE) -> Any:
    return store.apply(header, stream(payload), table)  # type: ignore[arg-type]


def leftovers() -> tuple[list[str], list[str]]:
    """Load threads still running and FIFO directories still on disk."""
    threads = [t.name for t in threading.enumerate() if t.name == "edu-sync-load-data"]
    return threads, glob.glob(os.path.join(tempfile.gettempdir(), f"edu-sync-load-{os.getpid()}-*"))


def test_hostile_values_survive_snapshots_and_deltas(
    store: TableStore, mysql_url: str, loaders: list[str]
) -> None:
    source = Source(HOSTILE_SCHEMA)
    assert apply(store, *source.snapshot([])).match  # an empty load: the server still asks for the rows
    rows = [hostile_row(i) for i in range(3 * len(HOSTILE_TEXT))]
    rows.append(
        ["100000", "😀" * 20, "长" * 130_000, "true", "\\x" + "ff" * 65_000, None, "-999999999.999", "D"]
    )
    assert apply(store, *source.snapshot(rows)).applied
    assert table_contents(mysql_url, TABLE, HOSTILE_SCHEMA) == source.canonical_set()
    upserts = [hostile_row(i, 1) for i in range(0, 3 * len(HOSTILE_TEXT), 2)] + [
        hostile_row(i, 2) for i in range(1000, 1040)
    ]
    deletes = [(str(i),) for i in range(1, 3 * len(HOSTILE_TEXT), 4)]
    result = apply(store, *source.delta(upserts=upserts, deletes=deletes))
    assert result.applied and result.match
    assert (result.rows_upserted, result.rows_deleted) == (len(upserts), len(deletes))
    assert table_contents(mysql_url, TABLE, HOSTILE_SCHEMA) == source.canonical_set()
    assert store.verify(source.subscription).match
    assert loaders == ["_LocalInfileLoader", "_LocalInfileLoader", "_LocalInfileDelta"]
    assert leftovers() == ([], [])


def test_staff_rows_through_the_fast_path(store: TableStore, mysql_url: str, loaders: list[str]) -> None:
    source = Source()
    assert apply(store, *source.snapshot([staff_row(i) for i in range(10_000)])).match
    header, payload = source.delta(
        upserts=[staff_row(i, 3) for i in range(0, 12_000, 3)],
        deletes=[(f"T{i:06d}",) for i in range(1, 9000, 3)],
    )
    assert apply(store, header, payload).match
    assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    assert loaders == ["_LocalInfileLoader", "_LocalInfileDelta"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.none() | st.sampled_from(HOSTILE_TEXT) | st.text(alphabet=',"\n\\NUL a', max_size=6),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from("UD"),
)
def test_null_fields_become_the_word_null_and_nothing_else_changes(values: list[str | None], op: str) -> None:
    line = f"{op},{encode_values(values)}"
    expected = ",".join([op, *("NULL" if v is None else quote(v) for v in values)])
    assert mysql_dialect.encode_lines([line]) == (expected + "\n").encode("utf-8")


def test_without_local_the_store_falls_back_to_inserts_and_says_so_once(
    mysql_url: str, loaders: list[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mysql_dialect, "_fallbacks_logged", set())
    # an engine made without local_infile: the client does not offer LOCAL
    store = TableStore(mysql_url, engine=sa.create_engine(mysql_url))
    try:
        source = Source()
        with caplog.at_level(logging.INFO, logger=mysql_dialect.__name__):
            assert apply(store, *source.snapshot([staff_row(i) for i in range(50)])).match
            assert apply(store, *source.delta(upserts=[staff_row(i, 1) for i in range(0, 60, 2)])).match
        assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    finally:
        store.close()
    store = TableStore(mysql_url, engine=sa.create_engine(mysql_url))  # as a daemon's next run would
    try:
        with caplog.at_level(logging.INFO, logger=mysql_dialect.__name__):
            assert apply(store, *source.delta(upserts=[staff_row(i, 2) for i in range(0, 60, 3)])).match
    finally:
        store.close()
    assert loaders == ["ExecutemanyLoader", "_Delta", "_Delta"]
    notes = [r.getMessage() for r in caplog.records if "multi-row INSERT" in r.getMessage()]
    assert len(notes) == 1 and "the connection was made without local_infile" in notes[0]


def test_the_database_url_can_refuse_local(mysql_url: str, loaders: list[str]) -> None:
    url = sa.make_url(mysql_url).update_query_dict({"local_infile": "0"})
    store = TableStore(url)
    try:
        source = Source()
        assert apply(store, *source.snapshot([staff_row(i) for i in range(30)])).match
        assert apply(store, *source.delta(upserts=[staff_row(i, 1) for i in range(0, 30, 2)])).match
        assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
        with store.engine.connect() as conn:  # and PyMySQL refuses any request for a file
            assert conn.connection.driver_connection._local_infile is False  # type: ignore[union-attr]
    finally:
        store.close()
    assert loaders == ["ExecutemanyLoader", "_Delta"]


def test_local_off_on_the_server_falls_back(
    store: TableStore, mysql_url: str, loaders: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's answer to ``SELECT @@GLOBAL.local_infile`` decides (global: not changed here)."""
    real = sa.engine.Connection.exec_driver_sql

    def server_says_off(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        return real(self, "SELECT 0" if "@@GLOBAL.local_infile" in sql else sql, *args, **kwargs)

    monkeypatch.setattr(sa.engine.Connection, "exec_driver_sql", server_says_off)
    source = Source()
    assert apply(store, *source.snapshot([staff_row(i) for i in range(20)])).match
    assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    assert loaders == ["ExecutemanyLoader"]


def _load(
    url: str, *, local_infile: bool, sql: str, rows: list[str] | None, abort: bool = False, keep: str = ""
) -> Any:
    """Run one _LocalInfile directly on a raw PyMySQL connection; returns (error, table rows)."""
    engine = sa.create_engine(url, connect_args={"local_infile": local_infile})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (k INT PRIMARY KEY, v LONGTEXT)", ())
            conn.commit()
            conn.exec_driver_sql("SELECT 1", ())  # a transaction for the load (rolled back below)
            driver = conn.connection.driver_connection
            driver._local_infile = False  # as MySQLDialect.on_connect leaves it  # type: ignore[union-attr]
            load = mysql_dialect._LocalInfile(driver, lambda path: sql.format(path=path))
            error: BaseException | None = None
            try:
                for row in rows or []:
                    load.write(mysql_dialect.encode_lines([row]), 1)
                if abort:
                    load.abort()
                else:
                    load.finish()
            except Exception as exc:
                error = exc
                load.abort()
            conn.rollback()
            count = conn.exec_driver_sql("SELECT COUNT(*) FROM t", ()).scalar()
            conn.exec_driver_sql("DROP TABLE t", ())
            conn.commit()
    finally:
        engine.dispose()
    assert leftovers() == ([], [keep] if keep else [])
    return error, count


LOAD_T = (
    "LOAD DATA LOCAL INFILE '{path}' INTO TABLE t CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' "
    "ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\n' (@op, k, v)"
)


def test_the_server_refusing_local_is_an_error_not_a_hang(mysql_url: str) -> None:
    # a connection made without local_infile: the server refuses the statement before
    # asking for the rows, while the writer waits for the FIFO's reader
    error, count = _load(mysql_url, local_infile=False, sql=LOAD_T, rows=['U,"1","a"'] * 3)
    assert error is not None and "local infile" in str(error)
    assert count == 0


def test_an_error_before_the_rows_are_asked_for_is_raised(mysql_url: str) -> None:
    error, _ = _load(
        mysql_url,
        local_infile=True,
        sql=LOAD_T.replace("INTO TABLE t", "INTO TABLE missing"),
        rows=['U,"1","a"'],
    )
    assert error is not None and "missing" in str(error)
    error, _ = _load(
        mysql_url, local_infile=True, sql=LOAD_T.replace("INTO TABLE t", "INTO TABLE missing"), rows=[]
    )
    assert error is not None and "missing" in str(error)


def test_directories_of_killed_processes_are_removed(mysql_url: str) -> None:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)  # a pid that no longer runs, as after a SIGKILL
    orphan = tempfile.mkdtemp(prefix=f"edu-sync-load-{child}-")
    os.mkfifo(os.path.join(orphan, "rows"))
    alive = tempfile.mkdtemp(prefix=f"edu-sync-load-{os.getpid()}-")
    try:
        assert _load(mysql_url, local_infile=True, sql=LOAD_T, rows=['U,"1","a"'], keep=alive) == (None, 0)
        assert not os.path.exists(orphan)
        assert os.path.exists(alive)  # the process that made it still runs
    finally:
        os.rmdir(alive)


def test_abort_before_and_after_rows_ends_the_statement(mysql_url: str) -> None:
    assert _load(mysql_url, local_infile=True, sql=LOAD_T, rows=None, abort=True) == (None, 0)
    rows = [f'U,"{i}","{"x" * 1000}"' for i in range(3000)]  # more than the pipe holds
    assert _load(mysql_url, local_infile=True, sql=LOAD_T, rows=rows, abort=True) == (None, 0)


def test_refused_rows_are_an_error(mysql_url: str) -> None:
    error, count = _load(
        mysql_url, local_infile=True, sql=LOAD_T, rows=['U,"1","a"', 'U,"2","b"', 'U,"1","c"']
    )
    assert error is not None and "Duplicate entry" in str(error)
    assert count == 0
    error, _ = _load(mysql_url, local_infile=True, sql=LOAD_T, rows=['U,"x","a"'])
    assert error is not None and "Incorrect integer value" in str(error)
    error, _ = _load(mysql_url, local_infile=True, sql=LOAD_T, rows=['U,"1"'])
    assert error is not None and "1261" in str(error)  # too few fields
    assert _load(mysql_url, local_infile=True, sql=LOAD_T, rows=['U,"1","a"', 'U,"2",NULL']) == (None, 0)


def test_a_failing_snapshot_changes_nothing_and_leaves_nothing_behind(
    store: TableStore, mysql_url: str, loaders: list[str]
) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(100)]))
    before = table_contents(mysql_url, TABLE, STAFF_SCHEMA)
    header, payload = Source().snapshot([staff_row(i) for i in range(20_000)])
    header.sequence = 2
    duplicated = payload + payload.split(b"\n", 1)[0] + b"\n"  # the first row again, at the end
    with pytest.raises(PayloadMalformed, match="Duplicate entry"):
        apply(store, header, duplicated)
    assert leftovers() == ([], [])

    def broken(fail_after: int) -> Iterator[bytes]:
        for start in range(0, fail_after, 65536):
            yield payload[start : start + 65536]
        raise OSError("the package file went away")

    for fail_after in (0, 65536, 20 * 65536):
        with pytest.raises(OSError, match="went away"):
            store.apply(header, broken(fail_after), TABLE)  # type: ignore[arg-type]
        assert leftovers() == ([], [])
    assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == before
    # the store (and its pooled connection) works on
    assert apply(store, *source.delta(upserts=[staff_row(i, 5) for i in range(50)])).match
    assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    assert set(loaders) == {"_LocalInfileLoader", "_LocalInfileDelta"}


def test_a_failing_delta_changes_nothing(store: TableStore, mysql_url: str) -> None:
    source = Source()
    apply(store, *source.snapshot([staff_row(i) for i in range(100)]))
    before = table_contents(mysql_url, TABLE, STAFF_SCHEMA)
    position = store.position(source.subscription)
    header, payload = Source().delta(upserts=[staff_row(i, 9) for i in range(10_000)])
    header.sequence, header.builds_on = 2, 1

    def broken() -> Iterator[bytes]:
        yield payload[: len(payload) // 2]
        raise OSError("the package file went away")

    with pytest.raises(OSError, match="went away"):
        store.apply(header, broken(), TABLE)  # type: ignore[arg-type]
    assert leftovers() == ([], [])
    assert table_contents(mysql_url, TABLE, STAFF_SCHEMA) == before
    assert store.position(source.subscription) == position
    assert dialect_base  # the interface the loaders implement


def test_abort_cuts_a_statement_the_server_does_not_end(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LOAD waits for a table lock held elsewhere, so the server never asks for the rows:
    abort() gives up after its grace period and shuts the connection down instead of hanging."""
    monkeypatch.setattr(mysql_dialect, "_ABORT_GRACE", 2.0)
    engine = sa.create_engine(mysql_url, connect_args={"local_infile": True})
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql("CREATE TABLE t (k INT PRIMARY KEY, v LONGTEXT)", ())
            holder.exec_driver_sql("LOCK TABLES t WRITE", ())
            with engine.connect() as conn:
                driver = conn.connection.driver_connection
                load = mysql_dialect._LocalInfile(driver, lambda path: LOAD_T.format(path=path))
                time.sleep(0.5)  # let the statement reach the lock
                assert load.thread.is_alive()
                load.abort()
                assert not load.thread.is_alive()
                assert isinstance(load.error, Exception)  # the cut connection ended the statement
                assert leftovers() == ([], [])
                conn.invalidate()
            holder.exec_driver_sql("UNLOCK TABLES", ())
            assert holder.exec_driver_sql("SELECT COUNT(*) FROM t", ()).scalar() == 0
            holder.exec_driver_sql("DROP TABLE t", ())
    finally:
        engine.dispose()
