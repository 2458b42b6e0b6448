"""PostgreSQL (and Kingbase, which speaks its protocol): COPY fast paths, transactional DDL.

Snapshots COPY the payload's canonical CSV straight into the staging table (the payload
*is* COPY's CSV). Deltas COPY into a temporary staging table, then run one ``INSERT ... ON
CONFLICT DO UPDATE`` and one ``DELETE ... USING`` while a second connection reads the rows
about to be replaced, by key.
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from connectors.stores.tables.dialects.base import (
    Batch,
    Binder,
    CanonicalText,
    DeltaApplier,
    SnapshotLoader,
    SqlDialect,
    StoredRows,
)
from protocol.canonical import ColumnSpec, ColumnType, Family

_FETCH_ROWS = 8192
_DELTA_TABLE = "edu_sync_delta"
_OP_COLUMN = "edu_sync_op"
"""The staged record's operation; the reserved prefix keeps it apart from any user column."""


class PostgreSQLDialect(SqlDialect):
    name = "postgresql"

    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        family = ctype.family
        if family is Family.TEXT:
            if ctype.length is None:
                return sa.types.TEXT()
            return sa.types.CHAR(ctype.length) if ctype.fixed else sa.types.VARCHAR(ctype.length)
        if family is Family.INTEGER:
            if ctype.int_min >= -(2**15) and ctype.int_max < 2**15:
                return sa.types.SMALLINT()
            if ctype.int_min >= -(2**31) and ctype.int_max < 2**31:
                return sa.types.INTEGER()
            if ctype.int_max < 2**63:
                return sa.types.BIGINT()
            return sa.types.NUMERIC(20, 0)
        if family is Family.DECIMAL:
            if ctype.precision is None:
                return sa.types.NUMERIC()
            return sa.types.NUMERIC(ctype.precision, ctype.scale)
        if family is Family.FLOAT:
            return pg.DOUBLE_PRECISION()
        if family is Family.DATE:
            return sa.types.DATE()
        if family is Family.TIMESTAMP:
            return pg.TIMESTAMP(precision=ctype.fraction)
        if family is Family.TIMESTAMPTZ:
            return pg.TIMESTAMP(timezone=True, precision=ctype.fraction)
        if family is Family.BINARY:
            return pg.BYTEA()
        return sa.types.BOOLEAN()

    def binder(self, ctype: ColumnType) -> Binder | None:
        return None  # COPY reads every canonical form as is

    def on_connect(self, dbapi_connection: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute("SET client_encoding = 'UTF8'")
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute("SET datestyle = 'ISO, YMD'")
            cur.execute("SET bytea_output = 'hex'")
            cur.execute("SET extra_float_digits = 1")
        dbapi_connection.commit()

    def canonical_select(self, columns: Sequence[ColumnSpec], alias: str) -> str | None:
        """One SELECT expression giving each row's canonical encoding, rendered by the server
        under this session's settings (ISO dates, UTC, hex bytea; ``numeric`` keeps its
        declared scale), or None when a column has no such rendering (floating point, zoned
        timestamps)."""
        fields = []
        for column in columns:
            value = f"{alias}{self.quote(column.name)}"
            family = column.type.family
            if family is Family.BOOLEAN:
                text = f"CASE WHEN {value} THEN 'true' ELSE 'false' END"
            elif family in (Family.FLOAT, Family.TIMESTAMPTZ):
                return None
            elif family is Family.TEXT:  # only text can hold a quote
                text = f"replace({value}::text, '\"', '\"\"')"  # char(n): without its padding
            else:
                text = f"{value}::text"
            quoted = f"'\"' || {text} || '\"'"
            # (NOT NULL columns too: a table altered behind the agent's back must still hash)
            fields.append(f"CASE WHEN {value} IS NULL THEN '' ELSE {quoted} END")
        return " || ',' || ".join(fields)

    def stored_rows(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> StoredRows:
        select = self.canonical_select(columns, "")
        if select is None:
            return super().stored_rows(conn, table, columns)
        query = f"SELECT {select} FROM {self.quote(table)}"
        return CanonicalText(_fetch(conn, query, (), first_column=True))

    def snapshot_loader(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> SnapshotLoader:
        return _CopyLoader(
            conn, f"COPY {self.quote(table)} ({self.column_list(columns)}) FROM STDIN (FORMAT csv)"
        )

    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        return _Delta(self, conn, table, columns)


def _unparameterised(sql: str) -> str:
    """COPY takes no parameters, so the %% that quoting doubled for pyformat is single again."""
    return sql.replace("%%", "%")


class _CopyLoader(SnapshotLoader):
    """Canonical records are COPY's CSV: write each record's raw text, no per-value work."""

    def __init__(self, conn: Connection, sql: str) -> None:
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.context = self.cursor.copy(_unparameterised(sql))
        self.copy = self.context.__enter__()
        self.open = True

    def load(self, batch: Batch) -> None:
        self.copy.write("\n".join(batch.bodies()) + "\n")

    def close(self) -> None:
        self.open = False
        self.context.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        if self.open:
            self.open = False
            # the original error is what matters; the caller rolls back
            with contextlib.suppress(Exception):
                self.context.__exit__(type(exc), exc, exc.__traceback__)


class _DeltaCopyLoader(_CopyLoader):
    def load(self, batch: Batch) -> None:
        self.copy.write("\n".join(batch.lines()) + "\n")


class _Delta(DeltaApplier):
    def __init__(
        self, dialect: PostgreSQLDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect, self.conn, self.table, self.columns = dialect, conn, table, columns
        self.keys = [c for c in columns if c.primary_key]
        self.key_positions = [i for i, c in enumerate(columns) if c.primary_key]
        self.key_values: list[list[str | None]] = [[] for _ in self.keys]
        q = dialect.quote
        staged = sa.Table(
            _DELTA_TABLE,
            sa.MetaData(),
            sa.Column(_OP_COLUMN, sa.types.CHAR(1)),
            *(sa.Column(c.name, dialect.column_type(c.type)) for c in columns),
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(_DELTA_TABLE)}", ())
        conn.exec_driver_sql(str(sa.schema.CreateTable(staged).compile(dialect=dialect.sa_dialect)), ())
        staged_columns = f"{q(_OP_COLUMN)}, {dialect.column_list(columns)}"
        copy_sql = f"COPY {q(_DELTA_TABLE)} ({staged_columns}) FROM STDIN (FORMAT csv)"
        self.loader = _DeltaCopyLoader(conn, copy_sql)

    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]:
        self.loader.load(batch)
        rows = batch.value_rows()
        for values, position in zip(self.key_values, self.key_positions, strict=True):
            values.extend([row[position] for row in rows])
        return ()

    def abort(self, exc: BaseException) -> None:
        self.loader.abort(exc)

    def finish(self) -> StoredRows:
        """Stream the rows about to change — read on a second connection while this one
        changes them — as canonical text where the server can render it."""
        self.loader.close()
        # Look each key up in the primary key index, for the read-back and the DELETE: a hash
        # or merge join reads the whole table, a cost that grows with the table rather than
        # with the change (the planner picks it even for 2% of a 2M-row table). With the joins
        # pinned, statistics of the staged rows would steer nothing: no ANALYZE.
        _pin_key_lookups(self.conn)
        text = self.dialect.canonical_select(self.columns, "t.")
        if text is not None:
            return CanonicalText(self._old_rows_while_applying(text, first_column=True))
        plain = self.dialect.column_list(self.columns, "t.")
        return (row for rows in self._old_rows_while_applying(plain, first_column=False) for row in rows)

    def _old_rows_while_applying(self, select: str, *, first_column: bool) -> Iterator[list[Any]]:
        """The rows of the delta's keys as they were, in lists, read on a second connection
        (its snapshot holds the committed rows, which this transaction has not changed yet)
        while this connection runs the INSERT and the DELETE in a helper thread: the server
        reads the old rows on one core while it writes the new ones on another."""
        d, q = self.dialect, self.dialect.quote
        names = ", ".join(f"k{i}" for i in range(len(self.keys)))
        arrays = ", ".join("%s::text[]" for _ in self.keys)
        match = " AND ".join(
            f"t.{q(c.name)} = k.k{i}"  # varchar/text: no cast, the index is used as is
            if c.type.family is Family.TEXT and not c.type.fixed
            else f"t.{q(c.name)} = k.k{i}::{d.column_type(c.type).compile(dialect=d.sa_dialect)}"
            for i, c in enumerate(self.keys)
        )
        query = f"SELECT {select} FROM {q(self.table)} t JOIN unnest({arrays}) AS k({names}) ON {match}"
        worker = _Apply(self)
        reader = self.conn.engine.connect()
        try:
            with reader.begin():
                _pin_key_lookups(reader)
                # the reader's snapshot is taken when the query starts, before the change
                old = _fetch(reader, query, self.key_values, first_column=first_column, started=worker.start)
                yield from old
        finally:
            try:
                worker.wait()  # raises the INSERT's or DELETE's error, if any
            finally:
                reader.close()

    def apply(self) -> None:
        """The change itself: one INSERT ... ON CONFLICT and one DELETE ... USING."""
        d, q, conn = self.dialect, self.dialect.quote, self.conn
        live, staged = q(self.table), q(_DELTA_TABLE)
        match = d.key_match(self.keys, "t", "s")
        names = d.column_list(self.columns)
        updates = ", ".join(f"{q(c.name)} = EXCLUDED.{q(c.name)}" for c in self.columns if not c.primary_key)
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        result = conn.exec_driver_sql(
            f"INSERT INTO {live} ({names}) SELECT {names} FROM {staged} WHERE {q(_OP_COLUMN)} = 'U' "
            f"ON CONFLICT ({d.column_list(self.keys)}) {conflict}",
            (),
        )
        self.upserted = result.rowcount
        result = conn.exec_driver_sql(
            f"DELETE FROM {live} t USING {staged} s WHERE s.{q(_OP_COLUMN)} = 'D' AND {match}", ()
        )
        self.deleted = result.rowcount


def _fetch(
    conn: Connection,
    query: str,
    params: Sequence[Any],
    *,
    first_column: bool,
    started: Callable[[], None] | None = None,
) -> Iterator[list[Any]]:
    """The rows of ``query`` in lists, through the driver's own server-side cursor (plain
    tuples a batch at a time; SQLAlchemy's streamed Result costs more than hashing a row);
    with ``first_column``, each row's first value. ``started`` runs once the query has."""
    cursor = conn.connection.driver_connection.cursor(name="edu_sync_rows")  # type: ignore[union-attr]
    try:
        cursor.execute(query, params)
        if started is not None:
            started()
        while rows := cursor.fetchmany(_FETCH_ROWS):
            yield [row[0] for row in rows] if first_column else rows
    finally:
        cursor.close()


def _pin_key_lookups(conn: Connection) -> None:
    conn.exec_driver_sql("SET LOCAL enable_hashjoin = off", ())
    conn.exec_driver_sql("SET LOCAL enable_mergejoin = off", ())


class _Apply(threading.Thread):
    """Runs a delta's INSERT and DELETE while the caller reads the old rows elsewhere; the
    reader always calls :meth:`wait`, which re-raises the thread's error."""

    def __init__(self, delta: _Delta) -> None:
        super().__init__(name="delta-apply", daemon=True)
        self.delta = delta
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.delta.apply()
        except BaseException as exc:  # re-raised in the caller's thread by wait()
            self.error = exc

    def wait(self) -> None:
        if self.ident is not None:
            self.join()
        if self.error is not None:
            raise self.error
