"""MySQL/MariaDB: multi-row statements, and ``RENAME TABLE`` swaps with a recorded intent.

DDL commits implicitly here, so a snapshot cannot swap inside the transaction that moves
the position: the store records a swap intent first and :meth:`TableStore.recover`
finishes or undoes an interrupted swap (see store.py). Tables use ``utf8mb4`` with a
binary collation so that keys compare exactly as the canonical text does.
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from connectors.stores.tables.dialects.base import (
    Batch,
    Binder,
    DeltaApplier,
    ExecutemanyLoader,
    SnapshotLoader,
    SqlDialect,
    chunks,
    strip_utc,
)
from protocol.canonical import ColumnSpec, ColumnType, Family

_KEY_CHUNK = 1000
_MAX_VARCHAR = 1000  # utf8mb4: 4 bytes a character against the 65,535-byte row limit

_INT_TYPES: list[tuple[int, int, Any]] = [
    (-(2**7), 2**7 - 1, mysql.TINYINT),
    (-(2**15), 2**15 - 1, mysql.SMALLINT),
    (-(2**23), 2**23 - 1, mysql.MEDIUMINT),
    (-(2**31), 2**31 - 1, mysql.INTEGER),
    (-(2**63), 2**63 - 1, mysql.BIGINT),
]


class MySQLDialect(SqlDialect):
    name = "mysql"
    transactional_ddl = False

    def table_options(self) -> dict[str, Any]:
        return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        family = ctype.family
        if family is Family.TEXT:
            if ctype.length is None or ctype.length > _MAX_VARCHAR:
                return mysql.LONGTEXT()
            if ctype.fixed and ctype.length <= 255:
                return mysql.CHAR(ctype.length)
            return mysql.VARCHAR(ctype.length)
        if family is Family.INTEGER:
            for low, high, kind in _INT_TYPES:
                if low <= ctype.int_min and ctype.int_max <= high:
                    return kind()
                if ctype.int_min == 0 and ctype.int_max <= 2 * high + 1:
                    return kind(unsigned=True)
        if family is Family.DECIMAL:
            if ctype.precision is None:
                return mysql.DECIMAL(65, 30)
            return mysql.DECIMAL(ctype.precision, ctype.scale)
        if family is Family.FLOAT:
            return mysql.DOUBLE()
        if family is Family.DATE:
            return mysql.DATE()
        if family in (Family.TIMESTAMP, Family.TIMESTAMPTZ):
            return mysql.DATETIME(fsp=ctype.fraction)
        if family is Family.BINARY:
            if ctype.length is not None and ctype.length <= 4000:
                return mysql.VARBINARY(ctype.length)
            return mysql.LONGBLOB()
        return mysql.TINYINT(1)

    def binder(self, ctype: ColumnType) -> Binder | None:
        if ctype.family is Family.TIMESTAMPTZ:
            return strip_utc  # DATETIME holds the UTC wall time
        return super().binder(ctype)

    def on_connect(self, dbapi_connection: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES')"
            )

    def snapshot_loader(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> SnapshotLoader:
        return ExecutemanyLoader(self, conn, table, columns)

    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        return _Delta(self, conn, table, columns)

    def rename_swap(self, conn: Connection, live: str, staging: str, old: str, live_exists: bool) -> None:
        """One atomic ``RENAME TABLE`` (implicit commit): staging becomes live, live becomes old."""
        q = self.quote
        if live_exists:
            conn.exec_driver_sql(f"RENAME TABLE {q(live)} TO {q(old)}, {q(staging)} TO {q(live)}", ())
        else:
            conn.exec_driver_sql(f"RENAME TABLE {q(staging)} TO {q(live)}", ())


class _Delta(DeltaApplier):
    def __init__(
        self, dialect: MySQLDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect, self.table, self.columns = dialect, table, columns
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.binders = [dialect.binder(c.type) for c in columns]
        self.key_positions = [i for i, c in enumerate(columns) if c.primary_key]
        self.keys = [columns[i] for i in self.key_positions]
        q = dialect.quote
        updates = ", ".join(f"{q(c.name)} = VALUES({q(c.name)})" for c in columns if not c.primary_key)
        first_key = q(self.keys[0].name)
        self.upsert_sql = (
            f"INSERT INTO {q(table)} ({dialect.column_list(columns)}) "
            f"VALUES ({dialect.placeholders(len(columns))}) "
            f"ON DUPLICATE KEY UPDATE {updates or f'{first_key} = {first_key}'}"
        )

    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]:
        d = self.dialect
        rows = d.bound_rows(batch, self.binders)
        keys = [[row[i] for i in self.key_positions] for row in rows]
        old: list[Sequence[Any]] = []
        for part in chunks(keys, _KEY_CHUNK):
            self.cursor.execute(
                d.keys_select(self.table, self.columns, self.keys, len(part)), [v for k in part for v in k]
            )
            old.extend(self.cursor.fetchall())
        ops = [r.op for r in batch.records]
        upserts = [row for row, op in zip(rows, ops, strict=True) if op == "U"]
        if upserts:
            self.cursor.executemany(self.upsert_sql, upserts)
            self.upserted += len(upserts)
        deletes = [key for key, op in zip(keys, ops, strict=True) if op == "D"]
        for part in chunks(deletes, _KEY_CHUNK):
            condition = d.keys_condition(self.keys, len(part))
            self.deleted += self.cursor.execute(
                f"DELETE FROM {d.quote(self.table)} WHERE {condition}", [v for k in part for v in k]
            )
        return old
