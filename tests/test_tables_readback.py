"""Rows read back from PostgreSQL as canonical text (COPY TO STDOUT, hashed in C).

A delta's replaced rows and ``verify``'s whole table are rendered by the server itself
(connectors/stores/tables/dialects/postgresql.py, ``canonical_select``) and hashed without a
Python value per field. The digest must be exactly the one of the driver-value path, for
every kind of value, including values written behind the agent's back whose text is not
canonical (they take the Python path, batch by batch).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from connectors.stores.tables import TableStore
from connectors.stores.tables.dialects import postgresql
from connectors.stores.tables.dialects.postgresql import PostgreSQLDialect
from tests.tables_helpers import Source, stream, table_contents

SCHEMA: list[dict[str, Any]] = [
    {"name": "ID", "type": "VARCHAR2(12)", "primary_key": True},
    {"name": "NAME", "type": "NVARCHAR2(20)"},
    {"name": "CODE", "type": "CHAR(4)"},
    {"name": "AMOUNT", "type": "NUMBER(12,3)"},
    {"name": "RATIO", "type": "NUMBER"},
    {"name": "N", "type": "INTEGER"},
    {"name": "BORN", "type": "DATE", "format": "YYYY-MM-DD"},
    {"name": "SEEN", "type": "TIMESTAMP(6)"},
    {"name": "PHOTO", "type": "BLOB"},
    {"name": "OK", "type": "BOOLEAN"},
    {"name": "NOTE", "type": "CLOB"},
]
TABLE = "readback"


def row(i: int, variant: int = 0) -> list[str | None]:
    odd = (i + variant) % 2 == 1
    return [
        f"K{i:05d}",
        ["张三", 'say "hi", then\nleave', "", None][(i + variant) % 4],
        ["AB", "A", None][i % 3],
        f"{i * 7 + variant}.{i % 1000:03d}",
        ["0.5", "-12.25", "1000000", "0.000001", None][(i + variant) % 5],
        str((i - 50) * 1001),
        f"19{50 + i % 50}-0{1 + i % 9}-{10 + i % 18}",
        f"2026-01-{1 + i % 28:02d} 0{i % 10}:00:00" + (f".{1 + i % 9}" if odd else ""),
        ["\\x", "\\x00ff", None][i % 3],
        ["true", "false", None][(i + variant) % 3],
        None if odd else "备注",
    ]


@pytest.fixture
def driver_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The same store with the text rendering switched off: driver values, canonicalised in Python."""
    monkeypatch.setattr(PostgreSQLDialect, "canonical_select", lambda self, columns, alias: None)
    yield


def apply_all(url: str) -> tuple[TableStore, Source]:
    store, source = TableStore(url), Source(SCHEMA, subscription="sub-readback")
    header, payload = source.snapshot([row(i) for i in range(300)])
    assert store.apply(header, stream(payload), TABLE).match
    deletes = [(f"K{i:05d}",) for i in range(1, 300, 7) if i % 3]
    header, payload = source.delta([row(i, variant=1) for i in range(0, 360, 3)], deletes=deletes)
    result = store.apply(header, stream(payload), TABLE)
    assert result.applied and result.match, result  # the replaced rows were read back as text
    assert table_contents(url, TABLE, SCHEMA) == source.canonical_set()
    return store, source


def test_the_server_renders_every_supported_value_canonically(pg_url: str) -> None:
    store, source = apply_all(pg_url)
    try:
        dialect = PostgreSQLDialect(sa.create_engine(pg_url).dialect)
        assert dialect.canonical_select(source.columns, "t.") is not None, "the text path is not in use"
        verified = store.verify(source.subscription)
        assert verified.match and verified.matches_expected and verified.rows == len(source.rows)
    finally:
        store.close()


def test_text_and_driver_values_give_the_same_digest(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store, source = apply_all(pg_url)
    try:
        engine = sa.create_engine(pg_url)
        with engine.begin() as conn:  # behind the agent's back: same numbers, other spellings
            conn.exec_driver_sql('UPDATE readback SET "RATIO" = 0.50 WHERE "RATIO" = 0.5')
            conn.exec_driver_sql('UPDATE readback SET "AMOUNT" = "AMOUNT" + 1 WHERE "ID" = %s', ("K00004",))
        engine.dispose()
        as_text = store.verify(source.subscription)
        monkeypatch.setattr(PostgreSQLDialect, "canonical_select", lambda self, columns, alias: None)
        as_values = store.verify(source.subscription)
        assert as_text.local_digest == as_values.local_digest
        assert not as_text.match and len(as_text.mismatched_buckets) == 1  # only K00004 changed
    finally:
        store.close()


def test_a_float_column_reads_driver_values(pg_url: str) -> None:
    columns = Source([*SCHEMA, {"name": "F", "type": "BINARY_DOUBLE"}]).columns
    dialect = PostgreSQLDialect(sa.create_engine(pg_url).dialect)
    assert dialect.canonical_select(columns, "t.") is None


def test_the_driver_path_still_applies_and_verifies(pg_url: str, driver_path: None) -> None:
    store, source = apply_all(pg_url)
    try:
        assert store.verify(source.subscription).match
    finally:
        store.close()


@pytest.mark.parametrize(
    "key_types",
    [("INTEGER", "DATE"), ("CHAR(3)",), ("NUMBER(12,2)", "TIMESTAMP(3)", "VARCHAR2(5)"), ("BINARY_DOUBLE",)],
)
def test_deltas_find_their_old_rows_by_keys_of_every_type(pg_url: str, key_types: tuple[str, ...]) -> None:
    """The old rows are looked up by key values sent as text and cast to each key's type."""
    values = {
        "INTEGER": lambda i: str(i - 20),
        "DATE": lambda i: f"2024-01-{1 + i % 28:02d} 00:00:00",  # Oracle DATE: a date and a time
        "CHAR(3)": lambda i: f"C{i:02d}",
        "NUMBER(12,2)": lambda i: f"{i}.50",
        "TIMESTAMP(3)": lambda i: f"2024-01-01 00:00:{i % 60:02d}.25",
        "VARCHAR2(5)": lambda i: f'k"{i}',
        "BINARY_DOUBLE": lambda i: f"{i}.5",
    }
    schema = [{"name": f"K{n}", "type": t, "primary_key": True} for n, t in enumerate(key_types)]
    schema.append({"name": "V", "type": "NVARCHAR2(10)"})

    def make(i: int, version: int) -> list[str | None]:
        return [values[t](i) for t in key_types] + [f"值{i}-{version}"]

    store, source = TableStore(pg_url), Source(schema, subscription="sub-keys")
    try:
        header, payload = source.snapshot([make(i, 0) for i in range(40)])
        assert store.apply(header, stream(payload), "keyed").match
        deletes = [tuple(make(i, 0)[: len(key_types)]) for i in range(1, 40, 6)]
        header, payload = source.delta([make(i, 1) for i in range(0, 50, 2)], deletes=deletes)
        result = store.apply(header, stream(payload), "keyed")
        assert result.applied and result.match, result
        assert result.rows_deleted == len(deletes)
        assert table_contents(pg_url, "keyed", schema) == source.canonical_set()
    finally:
        store.close()


def _fail_the_change(monkeypatch: pytest.MonkeyPatch) -> tuple[type[BaseException], str]:
    """The INSERT/DELETE (helper thread) changes the rows, then fails."""
    applied = postgresql._Delta.apply

    def apply_then_fail(self: postgresql._Delta) -> None:
        applied(self)  # the rows are changed in the transaction...
        raise RuntimeError("the server went away")  # ...which must then be rolled back

    monkeypatch.setattr(postgresql._Delta, "apply", apply_then_fail)
    return RuntimeError, "went away"


def _fail_the_read(monkeypatch: pytest.MonkeyPatch) -> tuple[type[BaseException], str]:
    """Reading the old rows on the second connection fails (the driver's own error)."""
    monkeypatch.setattr(PostgreSQLDialect, "canonical_select", lambda self, columns, alias: "1 / 0")
    return Exception, "division by zero"


@pytest.mark.parametrize("fail", [_fail_the_change, _fail_the_read])
def test_a_failing_change_or_read_rolls_the_delta_back(
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    fail: Callable[[pytest.MonkeyPatch], tuple[type[BaseException], str]],
) -> None:
    """The INSERT/DELETE run in a helper thread while the old rows are read on a second
    connection: either's error reaches the caller, nothing of the delta stays, no thread or
    connection is left."""
    store, source = TableStore(pg_url), Source(SCHEMA, subscription="sub-fail")
    try:
        header, payload = source.snapshot([row(i) for i in range(200)])
        assert store.apply(header, stream(payload), TABLE).match
        before = table_contents(pg_url, TABLE, SCHEMA)
        error, message = fail(monkeypatch)
        header, payload = source.delta([row(i, variant=1) for i in range(0, 200, 2)], deletes=[("K00001",)])
        with pytest.raises(error, match=message):
            store.apply(header, stream(payload), TABLE)
        assert table_contents(pg_url, TABLE, SCHEMA) == before
        assert store.position(source.subscription).sequence == 1  # type: ignore[union-attr]
        assert not [t for t in threading.enumerate() if t.name == "delta-apply"]
        assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        store.close()
