"""SQLite snapshots through edu_rows (protocol/csrc/sqlite_rows.c, dialects/sqlite.py).

edu_rows must store exactly what ``executemany`` with the dialect's Python binders stores
(same value, same storage class), for every type family it takes; it refuses anything not in
the canonical encoding with an error naming the record, and the store then loads that batch
through ``executemany`` (so the row checks name the bad row). Without edu_rows, or with a
FLOAT column, the store uses ``executemany`` throughout.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.stores.tables import RowRejected, TableStore
from connectors.stores.tables.dialects import Batch, dialect_for
from connectors.stores.tables.dialects import base as dialect_base
from connectors.stores.tables.dialects import sqlite as sqlite_dialect
from connectors.stores.tables.schema import build_table, ddl_statements
from protocol.canonical import RawBatch, canonicalize, columns_from_schema, encode_values
from tests.tables_helpers import STAFF_SCHEMA, Source, spy_loaders, staff_row, stream, table_contents

SCHEMA: list[dict[str, Any]] = [
    {"name": "ID", "type": "NUMBER(10)", "primary_key": True},
    {"name": "V_TEXT", "type": "NVARCHAR2(40)"},
    {"name": "V_CLOB", "type": "CLOB"},
    {"name": "V_NUMBER", "type": "NUMBER(12,3)"},
    {"name": "V_BIG", "type": "NUMBER(38)"},
    {"name": "V_BIGINT", "type": "BIGINT"},
    {"name": "V_DATE", "type": "DATE", "format": "YYYY-MM-DD"},
    {"name": "V_TS", "type": "TIMESTAMP WITH TIME ZONE"},
    {"name": "V_BLOB", "type": "BLOB"},
    {"name": "V_BOOLEAN", "type": "BOOLEAN"},
]
COLUMNS = columns_from_schema(SCHEMA)
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=40)
VALUES = [
    TEXT,
    TEXT | st.just('"\n""\r\n,"'),
    st.decimals(min_value=Decimal("-999999999.999"), max_value=Decimal("999999999.999"), places=3),
    st.integers(-(10**38) + 1, 10**38 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.dates(),
    st.datetimes(timezones=st.just(timezone.utc)),
    st.binary(max_size=20),
    st.booleans(),
]
ROWS = st.lists(st.tuples(*[st.none() | v for v in VALUES]), max_size=12)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sa.Connection]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _records(rows: list[tuple[object, ...]]) -> list[str]:
    return [
        "U,"
        + encode_values(
            [str(i)]
            + [None if v is None else canonicalize(v, c) for v, c in zip(row, COLUMNS[1:], strict=True)]
        )
        for i, row in enumerate(rows)
    ]


def _stored(conn: sa.Connection, table: str) -> list[tuple[Any, ...]]:
    """Each value as SQLite holds it: its literal and its storage class."""
    cells = ", ".join(f'quote("{c.name}"), typeof("{c.name}")' for c in COLUMNS)
    return list(conn.exec_driver_sql(f'SELECT {cells} FROM "{table}" ORDER BY rowid').fetchall())


def _load_both_ways(conn: sa.Connection, records: list[str]) -> tuple[list[Any], list[Any]]:
    dialect = dialect_for(conn.dialect)
    assert isinstance(dialect, sqlite_dialect.SQLiteDialect)
    for name in ("by_rows_table", "by_executemany"):
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
        for statement in ddl_statements(dialect, build_table(dialect, name, COLUMNS, pk_name=f"pk_{name}")):
            conn.exec_driver_sql(statement)
    loader = dialect.snapshot_loader(conn, "by_rows_table", COLUMNS)
    assert isinstance(loader, sqlite_dialect.RowsTableLoader)
    loader.load(Batch(raw=RawBatch(records, None, 1), width=len(COLUMNS)))
    dialect_base.ExecutemanyLoader(dialect, conn, "by_executemany", COLUMNS).load(
        Batch(raw=RawBatch(records, None, 1), width=len(COLUMNS))
    )
    return _stored(conn, "by_rows_table"), _stored(conn, "by_executemany")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
@example(
    rows=[
        ('张三 "x",\n', "", Decimal("-0.001"), 10**38 - 1, -(2**63), None, None, b"\x00\xff", False),
        ("", '""', None, -(10**38) + 1, 2**63 - 1, None, None, b"", True),
    ]
)
def test_rows_table_stores_what_executemany_stores(
    conn: sa.Connection, rows: list[tuple[object, ...]]
) -> None:
    by_rows_table, by_executemany = _load_both_ways(conn, _records(rows))
    assert by_rows_table == by_executemany
    assert len(by_rows_table) == len(rows)


def _select(records: str, plan: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(":memory:")
    width = len(plan) if 0 < len(plan) <= 1000 else 1
    columns = ", ".join(["op"] + [f"c{i}" for i in range(width)])
    return db.execute(f"SELECT {columns} FROM edu_rows(?, ?)", (records, plan)).fetchall()


def test_rows_table_reads_framed_records() -> None:
    text = 'U,"1","a ""b""\nc",\nD,"2",,"x"\n'  # a trailing newline ends the last record
    assert _select(text, "itt") == [("U", 1, 'a "b"\nc', None), ("D", 2, None, "x")]
    assert _select("", "t") == []
    assert _select('U,"-9223372036854775808","9223372036854775807"', "ii") == [("U", -(2**63), 2**63 - 1)]
    assert _select('U,"\\x00ffAB","true","false"', "xbb") == [("U", b"\x00\xff\xab", 1, 0)]


@pytest.mark.parametrize(
    ("records", "plan", "error"),
    [
        ('X,"1"', "t", "record 1 of the batch does not start with U, or D,"),
        ('U,"1"\nU,1', "t", "record 2 of the batch has an unquoted value"),
        ('U,"1', "t", "record 1 of the batch has an unterminated quoted value"),
        ('U,"1"', "tt", "record 1 of the batch has fewer values than columns"),
        ('U,"1","2"', "t", "record 1 of the batch has more values than columns"),
        ('U,"1"', "", "comes with a plan that is not 1 to 1000 of the letters t, i, x, b"),
        ('U,"1"', "f", "comes with a plan"),
        ('U,"1"', "t" * 1001, "comes with a plan"),
        ('U,"9223372036854775808"', "i", "record 1 of the batch, value 1: is out of the 64-bit range"),
        ('U,"-9223372036854775809"', "i", "is out of the 64-bit range"),
        ('U,"+1"', "i", "value 1: is not an integer"),
        ('U,"1.0"', "i", "is not an integer"),
        ('U,"-"', "i", "is not an integer"),
        ('U,""', "i", "is not an integer"),
        ('U,"1""2"', "i", "value 1: holds a quote"),
        ('U,"TRUE"', "b", "is not true or false"),
        ('U,"\\x0"', "x", "is not \\x and pairs of hex digits"),
        ('U,"\\xzz"', "x", "is not \\x and pairs of hex digits"),
        ('U,"00"', "x", "is not \\x and pairs of hex digits"),
    ],
)
def test_rows_table_refuses_what_is_not_canonical(records: str, plan: str, error: str) -> None:
    with pytest.raises(sqlite3.OperationalError) as raised:
        _select(records, plan)
    assert str(raised.value).startswith("edu_rows: ") and error in str(raised.value)


def test_rows_table_needs_both_arguments() -> None:
    db = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError):
        db.execute("SELECT op FROM edu_rows").fetchall()
    with pytest.raises(sqlite3.OperationalError):
        db.execute("SELECT op FROM edu_rows('U,\"1\"')").fetchall()
    with pytest.raises(sqlite3.OperationalError, match="no such module: edu_rows"):
        db.execute("CREATE VIRTUAL TABLE t USING edu_rows")  # eponymous only


@pytest.fixture
def loaders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kinds of snapshot loaders the SQLite dialect hands out, and each batch loaded by
    ``executemany`` (a fallback's or an ExecutemanyLoader's)."""
    seen = spy_loaders(monkeypatch, sqlite_dialect.SQLiteDialect)
    executemany_load = dialect_base.ExecutemanyLoader.load

    def spy_executemany(self: Any, batch: Batch) -> None:
        seen.append("executemany batch")
        executemany_load(self, batch)

    monkeypatch.setattr(dialect_base.ExecutemanyLoader, "load", spy_executemany)
    return seen


def test_store_snapshots_go_through_the_rows_table(sqlite_url: str, loaders: list[str]) -> None:
    store = TableStore(sqlite_url)
    try:
        source = Source()
        result = store.apply(*_package(source.snapshot([staff_row(i) for i in range(3000)])))
        assert result.match and result.rows == 3000
        assert table_contents(sqlite_url, "staff", STAFF_SCHEMA) == source.canonical_set()
    finally:
        store.close()
    assert loaders == ["RowsTableLoader"]  # and no batch fell back


def test_a_refused_batch_falls_back_and_the_checks_name_the_row(sqlite_url: str, loaders: list[str]) -> None:
    store = TableStore(sqlite_url)
    try:
        source = Source()
        assert store.apply(*_package(source.snapshot([staff_row(i) for i in range(10)]))).match
        before = table_contents(sqlite_url, "staff", STAFF_SCHEMA)
        rows = [staff_row(i, 1) for i in range(10)]
        rows[7][7] = "\\x0"  # BLOB: odd hex, refused by edu_rows; bytes.fromhex refuses it too
        with pytest.raises(RowRejected) as raised:
            store.apply(*_package(source.snapshot(rows)))
        assert "T000007" in str(raised.value) and "ZP" in str(raised.value)
        assert table_contents(sqlite_url, "staff", STAFF_SCHEMA) == before
    finally:
        store.close()
    assert loaders == ["RowsTableLoader", "RowsTableLoader", "executemany batch"]


def test_without_the_rows_table_snapshots_use_executemany(
    sqlite_url: str, loaders: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_dialect, "ROWS_TABLE_MISSING", "not registered (test)")
    monkeypatch.setattr(sqlite_dialect, "_fallbacks_logged", set())
    store = TableStore(sqlite_url)
    try:
        source = Source()
        with caplog.at_level(logging.INFO, logger=sqlite_dialect.__name__):
            for _ in range(2):
                assert store.apply(*_package(source.snapshot([staff_row(i) for i in range(50)]))).match
        assert table_contents(sqlite_url, "staff", STAFF_SCHEMA) == source.canonical_set()
    finally:
        store.close()
    notes = [r.getMessage() for r in caplog.records if "edu_rows unavailable" in r.getMessage()]
    assert notes == [  # once, not per snapshot
        "SQLite: edu_rows unavailable: not registered (test); loading snapshots with executemany instead"
    ]
    assert loaders[0] == "ExecutemanyLoader" and "RowsTableLoader" not in loaders


def test_a_float_column_uses_executemany(sqlite_url: str, loaders: list[str]) -> None:
    schema = [{"name": "ID", "type": "INTEGER", "primary_key": True}, {"name": "X", "type": "BINARY_DOUBLE"}]
    store = TableStore(sqlite_url)
    try:
        source = Source(schema, subscription="floats")
        rows = [[str(i), canonicalize(i / 3, columns_from_schema(schema)[1])] for i in range(20)]
        assert store.apply(*_package(source.snapshot(rows), "floats")).match
        assert table_contents(sqlite_url, "floats", schema) == source.canonical_set()
    finally:
        store.close()
    assert loaders[0] == "ExecutemanyLoader"


def _package(package: tuple[Any, bytes], table: str = "staff") -> tuple[Any, Any, str]:
    header, payload = package
    return header, stream(payload), table


EARLY_CONNECTION = """
import sqlite3, sys
import sqlalchemy as sa
early = sqlite3.connect(sys.argv[1], check_same_thread=False)  # before the dialect registers edu_rows
from connectors.stores.tables.dialects import sqlite as dialect
engines = sa.create_engine("sqlite://", creator=lambda: early), sa.create_engine("sqlite:///" + sys.argv[1])
print([dialect._has_rows_table(engine.connect()) for engine in engines])
"""


def test_a_connection_opened_before_the_registration_is_told_apart(tmp_path: Path) -> None:
    """Only connections opened after the registration have edu_rows; the loader asks each one."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", EARLY_CONNECTION, str(tmp_path / "early.db")],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[False, True]"
