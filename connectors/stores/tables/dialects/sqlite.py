"""SQLite: one transaction for everything, WAL for readers, rows parsed inside SQLite.

Exact numbers, dates and timestamps are stored as their canonical TEXT (SQLite has no
exact decimal and no date type; NUMERIC affinity would turn ``1.10`` into a float).

Snapshots load a batch with one ``INSERT ... SELECT ... FROM edu_rows(records, plan)``: a
virtual table of ours (protocol/csrc/sqlite_rows.c) that reads the batch's framed text in C
and binds each value as the binders below would, inside the one ``sqlite3_step`` Python's
sqlite3 module runs without the GIL. No Python object per value, and the row checks run in
their threads meanwhile. Where edu_rows is missing (an SQLite library it cannot reach), a
FLOAT column (Python's float parsing is the reference) or a batch it refuses, the same rows
go through ``executemany``, with the same values.
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connectors.stores.tables.dialects.base import (
    Batch,
    Binder,
    DeltaApplier,
    ExecutemanyLoader,
    SnapshotLoader,
    SqlDialect,
    bool_to_int,
    chunks,
    hex_to_bytes,
)
from protocol import _native
from protocol.canonical import ColumnSpec, ColumnType, Family

_KEY_CHUNK = 400  # rows per keyed SELECT: far below SQLITE_MAX_VARIABLE_NUMBER
_ROWS_TABLE_WIDTH = 1000  # edu_rows' value columns c0 ... c999
_ROWS_TABLE_ERROR = "edu_rows:"  # prefix of the errors of edu_rows' own refusals


def _register_rows_table() -> str | None:
    """Give every SQLite connection opened from now on the edu_rows table; why not, if not."""
    import _sqlite3

    path = getattr(_sqlite3, "__file__", None)
    if path is None:
        return "Python's _sqlite3 module is built in (no library file to reach SQLite through)"
    try:
        _native.sqlite_register(path)
    except OSError as exc:
        return str(exc)
    return None


ROWS_TABLE_MISSING = _register_rows_table()
"""None once edu_rows is registered (at import, before the store opens a connection)."""

log = logging.getLogger(__name__)
_fallbacks_logged: set[str] = set()

_BINDERS: dict[str, Binder | None] = {"t": None, "i": int, "f": float, "x": hex_to_bytes, "b": bool_to_int}


class SQLiteDialect(SqlDialect):
    name = "sqlite"
    has_comments = False

    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        family = ctype.family
        if family is Family.INTEGER and ctype.int_max < 2**63:
            return sa.types.INTEGER()
        if family is Family.FLOAT:
            return sa.types.REAL()
        if family is Family.BINARY:
            return sa.types.BLOB()
        if family is Family.BOOLEAN:
            return sa.types.INTEGER()
        return sa.types.TEXT()

    @staticmethod
    def storage(ctype: ColumnType) -> str:
        """How canonical text is bound, as edu_rows' plan letter: ``t`` as is, ``i`` int64,
        ``f`` float, ``x`` hex to bytes, ``b`` true/false to 1/0."""
        family = ctype.family
        if family is Family.INTEGER and ctype.int_max < 2**63:
            return "i"
        return {Family.FLOAT: "f", Family.BINARY: "x", Family.BOOLEAN: "b"}.get(family, "t")

    def binder(self, ctype: ColumnType) -> Binder | None:
        return _BINDERS[self.storage(ctype)]

    def on_connect(self, dbapi_connection: Any) -> None:
        # WAL: readers keep reading the old table while a snapshot loads and swaps.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    def engine_options(self) -> dict[str, Any]:
        # The driver's own implicit transactions are off; the store's "begin" hook opens
        # BEGIN IMMEDIATE so DDL (staging table, rename) is inside the same transaction.
        return {"connect_args": {"isolation_level": None}}

    def begin(self, conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def snapshot_loader(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> SnapshotLoader:
        plan = "".join(self.storage(c.type) for c in columns)
        if "f" in plan or len(plan) > _ROWS_TABLE_WIDTH or not _has_rows_table(conn):
            return ExecutemanyLoader(self, conn, table, columns)
        return RowsTableLoader(self, conn, table, columns, plan)

    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        return _Delta(self, conn, table, columns)


def _has_rows_table(conn: Connection) -> bool:
    """Whether this connection has edu_rows (opened after the registration, same SQLite)."""
    reason = ROWS_TABLE_MISSING
    if reason is None:
        try:
            conn.connection.driver_connection.execute("SELECT count(*) FROM edu_rows(?, ?)", ("", "t"))  # type: ignore[union-attr]
            return True
        except sqlite3.OperationalError as exc:
            reason = f"this connection has no edu_rows ({exc})"
    if reason not in _fallbacks_logged:  # once per process: a daemon opens many stores
        _fallbacks_logged.add(reason)
        log.info("SQLite: edu_rows unavailable: %s; loading snapshots with executemany instead", reason)
    return False


class RowsTableLoader(SnapshotLoader):
    """One ``INSERT ... SELECT`` from edu_rows a batch (module docstring); a batch edu_rows
    refuses (SQLite undoes the statement) is loaded by ``executemany``, whose binders and the
    row checks then say what is wrong with it."""

    def __init__(
        self, dialect: SQLiteDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec], plan: str
    ) -> None:
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.plan = plan
        values = ", ".join(f"c{i}" for i in range(len(columns)))
        self.sql = (
            f"INSERT INTO {dialect.quote(table)} ({dialect.column_list(columns)}) "
            f"SELECT {values} FROM edu_rows(?, ?)"
        )
        self.fallback = ExecutemanyLoader(dialect, conn, table, columns)

    def load(self, batch: Batch) -> None:
        try:
            self.cursor.execute(self.sql, ("\n".join(batch.lines()), self.plan))
        except sqlite3.OperationalError as exc:
            if not str(exc).startswith(_ROWS_TABLE_ERROR):
                raise
            self.fallback.load(batch)


class _Delta(DeltaApplier):
    def __init__(
        self, dialect: SQLiteDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect, self.table, self.columns = dialect, table, columns
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.binders = [dialect.binder(c.type) for c in columns]
        self.key_positions = [i for i, c in enumerate(columns) if c.primary_key]
        self.keys = [columns[i] for i in self.key_positions]
        q = dialect.quote
        updates = ", ".join(f"{q(c.name)} = excluded.{q(c.name)}" for c in columns if not c.primary_key)
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        self.upsert_sql = (
            f"INSERT INTO {q(table)} ({dialect.column_list(columns)}) "
            f"VALUES ({dialect.placeholders(len(columns))}) "
            f"ON CONFLICT ({dialect.column_list(self.keys)}) {conflict}"
        )
        self.delete_sql = f"DELETE FROM {q(table)} WHERE " + " AND ".join(
            f"{q(c.name)} = ?" for c in self.keys
        )

    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]:
        rows = self.dialect.bound_rows(batch, self.binders)
        keys = [[row[i] for i in self.key_positions] for row in rows]
        old: list[Sequence[Any]] = []
        for part in chunks(keys, _KEY_CHUNK):
            sql = self.dialect.keys_select(self.table, self.columns, self.keys, len(part))
            old.extend(self.cursor.execute(sql, [v for key in part for v in key]).fetchall())
        ops = batch.ops()
        upserts = [row for row, op in zip(rows, ops, strict=True) if op == "U"]
        self.cursor.executemany(self.upsert_sql, upserts)
        self.upserted += len(upserts)
        before = self.cursor.connection.total_changes
        self.cursor.executemany(
            self.delete_sql, [key for key, op in zip(keys, ops, strict=True) if op == "D"]
        )
        self.deleted += self.cursor.connection.total_changes - before
        return old
