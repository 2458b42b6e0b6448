"""The one interface behind which every database difference lives.

A :class:`SqlDialect` knows, for one kind of database: the column type for each canonical
type family, how canonical text is bound as a driver parameter, how rows are bulk-loaded
into a staging table, how a delta is applied (the fast path of that database), and how a
staging table is swapped in. The store (``store.py``) is written once against this
interface; there is one subclass per database and no ``if dialect == ...`` elsewhere.
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from connectors.stores.tables.errors import PayloadMalformed
from protocol import _native
from protocol.canonical import (
    ColumnSpec,
    ColumnType,
    Family,
    RawBatch,
    Record,
    RecordFormatError,
    parse_raw_batch,
)

Binder = Callable[[str], object]


class CanonicalText(NamedTuple):
    """Rows the database itself rendered in the canonical encoding (one string a row, no op),
    in lists: the digest hashes them in C without a Python value per field
    (protocol/fastrows.py). PostgreSQL renders them (``canonical_select``)."""

    batches: Iterable[list[str]]


StoredRows = Iterable[Sequence[Any]] | CanonicalText
"""Rows read back for a digest: driver values (schema column order) or canonical text."""


def drain(rows: StoredRows) -> None:
    """Run a delta's ``finish()`` to its end when the old rows are not needed."""
    for _ in rows.batches if isinstance(rows, CanonicalText) else rows:
        pass


class Batch:
    """Payload records, in payload order.

    Built from parsed records, or from framed text not yet parsed (:class:`RawBatch`):
    ``records`` then parses on first use, while loaders that take the canonical text as
    it is (PostgreSQL's COPY) read :meth:`lines` or :meth:`bodies` and never parse.
    Validation runs beside the load (``rowcheck``) and must pass before anything commits.
    """

    __slots__ = ("_parsed", "_records", "raw", "width")

    def __init__(
        self, records: list[Record] | None = None, *, raw: RawBatch | None = None, width: int = 0
    ) -> None:
        if (records is None) == (raw is None):
            raise ValueError("a batch is built from records or from a raw batch")
        self._records, self.raw, self.width = records, raw, width
        self._parsed: tuple[str, list[tuple[str | None, ...]]] | bool | None
        self._parsed = raw is not None  # True: not read yet

    @property
    def records(self) -> list[Record]:
        if self._records is None:
            assert self.raw is not None
            try:
                self._records = parse_raw_batch(self.raw, self.width)
            except RecordFormatError as exc:
                raise PayloadMalformed(str(exc)) from exc
        return self._records

    def _ops_and_rows(self) -> tuple[str, list[tuple[str | None, ...]]] | None:
        """Ops and value tuples read in C from the framed text, when every record is in the
        canonical encoding (protocol/csrc/native.c, ``parse_rows``), without record objects."""
        if self._parsed is True:
            assert self.raw is not None
            self._parsed = _native.parse_rows(self.raw.records, self.width)
        return self._parsed or None

    def value_rows(self) -> Sequence[Sequence[str | None]]:
        """Each record's values (str, None for NULL)."""
        parsed = self._ops_and_rows()
        return parsed[1] if parsed is not None else [r.values for r in self.records]

    def ops(self) -> Sequence[str]:
        """Each record's operation (``U`` or ``D``)."""
        parsed = self._ops_and_rows()
        return parsed[0] if parsed is not None else [r.op for r in self.records]

    def lines(self) -> list[str]:
        """Each record's text, ``op,values`` (no terminator)."""
        if self.raw is not None:
            return self.raw.records
        return [f"{r.op},{r.raw}" for r in self.records]

    def bodies(self) -> list[str]:
        """Each record's canonical values without the op (what a row digest hashes)."""
        if self.raw is not None:
            return [line[2:] for line in self.raw.records]
        return [r.raw for r in self.records]


class SqlDialect(ABC):
    """Database-specific SQL for the table store (one subclass per database)."""

    name: ClassVar[str]
    transactional_ddl: ClassVar[bool] = True
    """False where DDL commits implicitly (MySQL/MariaDB): snapshots then use a recorded swap intent."""
    has_comments: ClassVar[bool] = True

    def __init__(self, sa_dialect: Dialect) -> None:
        self.sa_dialect = sa_dialect
        self._preparer = sa_dialect.identifier_preparer

    # -- identifiers and SQL text -------------------------------------------------------
    def quote(self, name: str) -> str:
        """Always-quoted identifier. For ``format``/``pyformat`` drivers SQLAlchemy doubles
        ``%``, so every statement built with it is executed *with* a parameter sequence."""
        quoted: str = self._preparer.quote_identifier(name)
        return quoted

    def placeholder(self, index: int) -> str:
        """The driver's positional placeholder (``index`` counts from 0)."""
        style = self.sa_dialect.paramstyle
        if style == "qmark":
            return "?"
        if style in ("format", "pyformat"):
            return "%s"
        return f":{index + 1}"

    def placeholders(self, count: int, start: int = 0) -> str:
        return ", ".join(self.placeholder(start + i) for i in range(count))

    def column_list(self, columns: Sequence[ColumnSpec], prefix: str = "") -> str:
        return ", ".join(prefix + self.quote(c.name) for c in columns)

    def insert_sql(self, table: str, columns: Sequence[ColumnSpec]) -> str:
        return (
            f"INSERT INTO {self.quote(table)} ({self.column_list(columns)}) "
            f"VALUES ({self.placeholders(len(columns))})"
        )

    def key_match(self, keys: Sequence[ColumnSpec], left: str, right: str) -> str:
        return " AND ".join(f"{left}.{self.quote(c.name)} = {right}.{self.quote(c.name)}" for c in keys)

    # -- types ----------------------------------------------------------------------------
    @abstractmethod
    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        """The column type that holds every canonical value of ``ctype`` losslessly."""

    def binder(self, ctype: ColumnType) -> Binder | None:
        """Canonical text -> driver parameter; None when the text binds as is."""
        if ctype.family is Family.BINARY:
            return hex_to_bytes
        if ctype.family is Family.BOOLEAN:
            return bool_to_int
        return None

    # -- sessions -------------------------------------------------------------------------
    def engine_options(self) -> dict[str, Any]:
        return {}

    def on_connect(self, dbapi_connection: Any) -> None:  # noqa: B027 - optional hook
        """Session settings the canonical form relies on (time zone, output formats)."""

    def begin(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Hook run when SQLAlchemy begins a transaction (SQLite opens it explicitly)."""

    # -- bulk operations ------------------------------------------------------------------
    def bound_rows(self, batch: Batch, binders: Sequence[Binder | None]) -> Sequence[Sequence[object]]:
        """Driver parameters of each record (read-only: may share the batch's value tuples)."""
        values = batch.value_rows()
        active = [(i, bind) for i, bind in enumerate(binders) if bind is not None]
        if not active:
            return values
        rows = []
        for row in values:
            bound: list[object] = list(row)
            for i, bind in active:
                value = row[i]
                if value is not None:
                    bound[i] = bind(value)
            rows.append(bound)
        return rows

    @abstractmethod
    def snapshot_loader(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> SnapshotLoader:
        """A loader writing rows into the (empty, fresh) staging table ``table``."""

    @abstractmethod
    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        """An applier of upserts/deletes to the live ``table``."""

    def swap_in(self, conn: Connection, live: str, staging: str, old: str, live_exists: bool) -> None:
        """Replace ``live`` by ``staging`` in the current transaction (transactional DDL)."""
        if live_exists:
            conn.exec_driver_sql(f"ALTER TABLE {self.quote(live)} RENAME TO {self.quote(old)}", ())
        conn.exec_driver_sql(f"ALTER TABLE {self.quote(staging)} RENAME TO {self.quote(live)}", ())
        if live_exists:
            conn.exec_driver_sql(f"DROP TABLE {self.quote(old)}", ())

    def add_column_sql(self, table: str, column: sa.Column[Any]) -> str:
        """``ALTER TABLE ... ADD`` for a new nullable column."""
        ddl = sa.schema.CreateColumn(column).compile(dialect=self.sa_dialect)
        return f"ALTER TABLE {self.quote(table)} ADD {ddl}"

    def select_all(
        self, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> Iterator[Sequence[Any]]:
        """Every row of ``table`` (raw driver values, schema column order), streamed."""
        sql = f"SELECT {self.column_list(columns)} FROM {self.quote(table)}"
        result = conn.exec_driver_sql(sql, (), execution_options={"stream_results": True, "yield_per": 2000})
        yield from result

    def stored_rows(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> StoredRows:
        """Every row of ``table`` for its digest (``verify``): driver values unless the
        database can render them canonically itself."""
        return self.select_all(conn, table, columns)

    def keys_condition(self, keys: Sequence[ColumnSpec], count: int) -> str:
        """``WHERE`` condition matching ``count`` keys (parameters: key values row after row)."""
        width = len(keys)
        if width == 1:
            return f"{self.quote(keys[0].name)} IN ({self.placeholders(count)})"
        tuples = ", ".join(f"({self.placeholders(width, i * width)})" for i in range(count))
        return f"({self.column_list(keys)}) IN ({tuples})"

    def keys_select(
        self, table: str, columns: Sequence[ColumnSpec], keys: Sequence[ColumnSpec], count: int
    ) -> str:
        """SELECT the rows of ``count`` keys (parameters: the key values row after row)."""
        condition = self.keys_condition(keys, count)
        return f"SELECT {self.column_list(columns)} FROM {self.quote(table)} WHERE {condition}"

    def table_options(self) -> dict[str, Any]:
        """Dialect keyword arguments for ``sa.Table`` (engine, charset...)."""
        return {}

    def rename_swap(self, conn: Connection, live: str, staging: str, old: str, live_exists: bool) -> None:
        """Swap for databases whose DDL commits implicitly (called under a recorded intent)."""
        if live_exists:
            conn.exec_driver_sql(f"ALTER TABLE {self.quote(live)} RENAME TO {self.quote(old)}", ())
        conn.exec_driver_sql(f"ALTER TABLE {self.quote(staging)} RENAME TO {self.quote(live)}", ())


class SnapshotLoader(ABC):
    """Bulk writer into a staging table (used for the whole stream, then closed)."""

    @abstractmethod
    def load(self, batch: Batch) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush anything buffered."""

    def abort(self, exc: BaseException) -> None:  # noqa: B027 - optional hook
        """Give up after an error (the transaction is rolled back by the caller)."""


class ExecutemanyLoader(SnapshotLoader):
    """A plain ``INSERT`` through the driver's ``executemany``, one call per batch.

    PyMySQL folds it into multi-row statements; sqlite3 and the Oracle/DM drivers bind
    arrays natively, so no dialect needs more than this for staging a snapshot.
    """

    def __init__(
        self, dialect: SqlDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect = dialect
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.binders = [dialect.binder(c.type) for c in columns]
        self.sql = dialect.insert_sql(table, columns)

    def load(self, batch: Batch) -> None:
        self.cursor.executemany(self.sql, self.dialect.bound_rows(batch, self.binders))


class DeltaApplier(ABC):
    """Applies a delta's records; reports the rows the delta replaces or deletes.

    ``stage(batch)`` may already write (per-batch databases) and returns the rows that
    existed for the batch's keys *before* the change; ``finish()`` returns the remaining
    pre-change rows (databases that stage first) and completes the change. The store
    removes those old rows from the digest, adds the new ones, so the digest update costs
    time proportional to the delta, never to the table.
    """

    upserted = 0
    deleted = 0

    @abstractmethod
    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]: ...

    def finish(self) -> StoredRows:
        return ()

    def abort(self, exc: BaseException) -> None:  # noqa: B027 - optional hook
        """Give up after an error (the transaction is rolled back by the caller)."""


def split_ops(batch: Batch) -> tuple[list[Record], list[Record]]:
    upserts = [r for r in batch.records if r.op == "U"]
    deletes = [r for r in batch.records if r.op == "D"]
    return upserts, deletes


def hex_to_bytes(text: str) -> bytes:
    """Canonical binary (``\\x`` then hex) -> the driver's bytes."""
    return bytes.fromhex(text[2:])


def bool_to_int(text: str) -> int:
    """Canonical boolean -> 1/0 (for databases without a boolean type)."""
    return 1 if text == "true" else 0


def strip_utc(text: str) -> str:
    """``...+00:00`` -> naive UTC text, for databases without a zoned type (MySQL DATETIME)."""
    return text[:-6]


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
