"""Oracle and 达梦 DM: ``MERGE`` for deltas. No server here: the SQL is compiled and tested.

Oracle's DDL commits implicitly and ``ALTER TABLE ... RENAME`` renames one table at a
time, so snapshots use the same recorded-intent swap as MySQL (see store.py); the brief
window between the two renames is documented in docs/tables.md. Oracle stores the empty
string as NULL: a canonical ``""`` cannot survive there (documented limitation).
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import oracle
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
from protocol.canonical import ColumnSpec, ColumnType, Family, to_python

_KEY_CHUNK = 500
_MAX_VARCHAR2_CHARS = 1000  # 4000 bytes at 4 bytes per character


class OracleDialect(SqlDialect):
    name = "oracle"
    transactional_ddl = False

    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        family = ctype.family
        if family is Family.TEXT:
            # character length semantics in an AL32UTF8 database (documented requirement)
            if ctype.length is None or ctype.length > _MAX_VARCHAR2_CHARS:
                return oracle.CLOB()
            if ctype.fixed and ctype.length <= 500:
                return oracle.NCHAR(ctype.length)
            return oracle.VARCHAR2(ctype.length)
        if family is Family.INTEGER:
            return oracle.NUMBER(len(str(max(abs(ctype.int_min), ctype.int_max))), 0)
        if family is Family.DECIMAL:
            if ctype.precision is None:
                return oracle.NUMBER()
            return oracle.NUMBER(ctype.precision, ctype.scale)
        if family is Family.FLOAT:
            return oracle.BINARY_DOUBLE()
        if family is Family.DATE or (family is Family.TIMESTAMP and ctype.declared == "DATE"):
            return oracle.DATE()
        if family is Family.TIMESTAMP:
            return oracle.TIMESTAMP()
        if family is Family.TIMESTAMPTZ:
            return oracle.TIMESTAMP(timezone=True)
        if family is Family.BINARY:
            if ctype.length is not None and ctype.length <= 2000:
                return oracle.RAW(ctype.length)
            return oracle.BLOB()
        return oracle.NUMBER(1, 0)

    def binder(self, ctype: ColumnType) -> Binder | None:
        if ctype.family is Family.TEXT:
            return None
        if ctype.family is Family.BOOLEAN:
            return super().binder(ctype)
        return lambda text: to_python(text, ctype)

    def snapshot_loader(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> SnapshotLoader:
        return ExecutemanyLoader(self, conn, table, columns)

    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        return _Merge(self, conn, table, columns)

    def merge_sql(self, table: str, columns: Sequence[ColumnSpec]) -> str:
        """One-row ``MERGE`` (run with ``executemany``): update the key's row or insert it."""
        q = self.quote
        source = ", ".join(f"{self.placeholder(i)} AS {q(c.name)}" for i, c in enumerate(columns))
        on = " AND ".join(f"t.{q(c.name)} = s.{q(c.name)}" for c in columns if c.primary_key)
        updates = ", ".join(f"t.{q(c.name)} = s.{q(c.name)}" for c in columns if not c.primary_key)
        matched = f" WHEN MATCHED THEN UPDATE SET {updates}" if updates else ""
        return (
            f"MERGE INTO {q(table)} t USING (SELECT {source} FROM dual) s ON ({on}){matched} "
            f"WHEN NOT MATCHED THEN INSERT ({self.column_list(columns)}) "
            f"VALUES ({self.column_list(columns, 's.')})"
        )

    def delete_sql(self, table: str, columns: Sequence[ColumnSpec]) -> str:
        keys = [c for c in columns if c.primary_key]
        condition = " AND ".join(f"{self.quote(c.name)} = {self.placeholder(i)}" for i, c in enumerate(keys))
        return f"DELETE FROM {self.quote(table)} WHERE {condition}"


class DMDialect(OracleDialect):
    """达梦 DM8: Oracle-compatible SQL (MERGE, dual, RENAME), via dmSQLAlchemy."""

    name = "dm"

    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        if ctype.family is Family.FLOAT:
            return sa.types.DOUBLE()  # DM has no BINARY_DOUBLE
        if ctype.family is Family.BINARY and ctype.length is not None and ctype.length <= 2000:
            return sa.types.VARBINARY(ctype.length)  # DM spells RAW as VARBINARY
        return super().column_type(ctype)


class _Merge(DeltaApplier):
    def __init__(
        self, dialect: OracleDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect, self.conn, self.table, self.columns = dialect, conn, table, columns
        self.binders = [dialect.binder(c.type) for c in columns]
        self.key_positions = [i for i, c in enumerate(columns) if c.primary_key]
        self.keys = [columns[i] for i in self.key_positions]
        self.merge = dialect.merge_sql(table, columns)
        self.delete = dialect.delete_sql(table, columns)

    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]:
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        rows = self.dialect.bound_rows(batch, self.binders)
        keys = [[row[i] for i in self.key_positions] for row in rows]
        old: list[Sequence[Any]] = []
        for part in chunks(keys, _KEY_CHUNK):
            cursor.execute(
                self.dialect.keys_select(self.table, self.columns, self.keys, len(part)),
                [v for k in part for v in k],
            )
            old.extend(cursor.fetchall())
        ops = batch.ops()
        upserts = [row for row, op in zip(rows, ops, strict=True) if op == "U"]
        deletes = [key for key, op in zip(keys, ops, strict=True) if op == "D"]
        if upserts:
            cursor.executemany(self.merge, upserts)
            self.upserted += len(upserts)
        if deletes:
            cursor.executemany(self.delete, deletes)
            self.deleted += cursor.rowcount
        return old
