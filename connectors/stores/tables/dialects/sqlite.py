"""SQLite: one transaction for everything, ``executemany`` fast path, WAL for readers.

Exact numbers, dates and timestamps are stored as their canonical TEXT (SQLite has no
exact decimal and no date type; NUMERIC affinity would turn ``1.10`` into a float).
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

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
    chunks,
)
from protocol.canonical import ColumnSpec, ColumnType, Family

_KEY_CHUNK = 400  # rows per keyed SELECT: far below SQLITE_MAX_VARIABLE_NUMBER


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

    def binder(self, ctype: ColumnType) -> Binder | None:
        if ctype.family is Family.INTEGER and ctype.int_max < 2**63:
            return int
        if ctype.family is Family.FLOAT:
            return float
        return super().binder(ctype)

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
        return ExecutemanyLoader(self, conn, table, columns)

    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        return _Delta(self, conn, table, columns)


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
