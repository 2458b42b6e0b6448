"""Reading a subscription's source table: only the listed columns, only the filtered rows.

Queries are built with SQLAlchemy Core, so identifiers are quoted by the dialect and every
filter value is a bound parameter. The row filter is operator configuration (trusted to name
columns of the source table, not to inject SQL): it cannot contain SQL text at all.
Results stream from server-side cursors (``stream_results`` + ``yield_per``), so memory stays
bounded whatever the table size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from hub.catalog import Condition, Subscription, TableSource

BATCH = 5000


def _condition(column: sa.ColumnClause[Any], cond: Condition) -> sa.ColumnElement[bool]:
    op = cond.op
    if op == "in":
        return column.in_(cond.values or [])
    if op == "not_in":
        return column.not_in(cond.values or [])
    if op == "is_null":
        return column.is_(None)
    if op == "not_null":
        return column.is_not(None)
    value = cond.value
    if op == "like":
        return column.like(value)
    comparisons = {
        "=": column.__eq__,
        "!=": column.__ne__,
        "<": column.__lt__,
        "<=": column.__le__,
        ">": column.__gt__,
        ">=": column.__ge__,
    }
    result: sa.ColumnElement[bool] = comparisons[op](value)
    return result


ROW_HASH_MODULUS = 1_000_000_007
"""Row hashes are reduced modulo this prime: sums over a million rows stay inside 64 bits."""


def _sqlite_row_hash(*values: Any) -> int:
    """SQLite has no hash function: the hub registers this one on its own connections."""
    digest = hashlib.blake2b(repr(values).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % ROW_HASH_MODULUS


def row_hash_expression(
    dialect: str, columns: Sequence[sa.ColumnElement[Any]]
) -> sa.ColumnElement[Any] | None:
    """A per-row hash of the subscribed columns computed *by the source database*, or None.

    It only has to be stable between two publishes on the same source (it is never compared
    with anything the agent computes), so each dialect uses what it has.
    """
    if dialect == "postgresql":
        text = sa.cast(sa.func.row(*columns), sa.Text)  # ROW(...)::text quotes and marks NULLs
        return sa.func.mod(sa.func.hashtextextended(text, 0), ROW_HASH_MODULUS)
    if dialect in ("mysql", "mariadb"):
        fields = [sa.func.ifnull(sa.func.concat("v", c), "n") for c in columns]  # NULL != ''
        hexed = sa.func.substring(sa.func.md5(sa.func.concat_ws("\x1f", *fields)), 1, 12)
        return sa.cast(sa.func.conv(hexed, 16, 10), sa.BigInteger) % ROW_HASH_MODULUS
    if dialect == "sqlite":
        return sa.func.edu_row_hash(*columns)
    return None


class TableReader:
    """Streams rows of one subscription's source, projected and filtered."""

    def __init__(self, subscription: Subscription, engine: sa.Engine | None = None) -> None:
        self.subscription = subscription
        self.source: TableSource = subscription.table_source
        self.columns = subscription.column_names
        self.keys = subscription.key_columns
        self.engine = engine or sa.create_engine(self.source.url, poolclass=sa.pool.NullPool)
        extra = {c.column for c in self.source.filter}
        if self.source.soft_delete is not None:
            extra.add(self.source.soft_delete.column)
        names = list(dict.fromkeys([*self.columns, *sorted(extra)]))
        self.table = sa.table(
            self.source.table, *(sa.column(n) for n in names), schema=self.source.table_schema
        )
        self._col = {n: self.table.c[n] for n in names}
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _register_sqlite_hash)
        self.row_hash = row_hash_expression(self.engine.dialect.name, [self._col[c] for c in self.columns])

    def close(self) -> None:
        self.engine.dispose()

    def _filter(self) -> list[sa.ColumnElement[bool]]:
        return [_condition(self._col[c.column], c) for c in self.source.filter]

    def _live(self) -> list[sa.ColumnElement[bool]]:
        soft = self.source.soft_delete
        if soft is None:
            return []
        column = self._col[soft.column]
        return [sa.or_(column.is_(None), column != soft.value)]

    def _stream(self, stmt: sa.Select[Any]) -> Iterator[Sequence[Any]]:
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(stmt)
            for partition in result.partitions():
                yield from partition

    def _selected(self, with_hash: bool) -> list[sa.ColumnElement[Any]]:
        selected: list[sa.ColumnElement[Any]] = [self._col[c] for c in self.columns]
        if with_hash:
            assert self.row_hash is not None
            selected.append(self.row_hash)
        return selected

    def rows(self, with_hash: bool = False) -> Iterator[Sequence[Any]]:
        """Every live row, in dictionary column order (plus the source's row hash if asked)."""
        stmt = sa.select(*self._selected(with_hash)).where(*self._filter(), *self._live())
        return self._stream(stmt)

    def changed_since(self, cursor: Any) -> Iterator[tuple[Sequence[Any], bool]]:
        """Rows whose cursor is ``>=`` the last one seen, with a soft-deleted flag per row.

        ``>=`` (not ``>``) so rows committed with the same cursor value as the last row of the
        previous publish are not lost; the caller de-duplicates against the published state.
        """
        cursor_col = self.source.cursor
        assert cursor_col is not None
        soft = self.source.soft_delete
        selected = [self._col[c] for c in self.columns]
        if soft is not None:
            selected.append(self._col[soft.column])
        stmt = sa.select(*selected).where(*self._filter(), self._col[cursor_col] >= cursor)
        for row in self._stream(stmt):
            if soft is None:
                yield row, False
            else:
                flag = row[-1]
                yield row[:-1], flag is not None and flag == soft.value

    def count(self) -> int:
        stmt = sa.select(sa.func.count()).select_from(self.table).where(*self._filter(), *self._live())
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def live_keys(self, lo: int | None = None, hi: int | None = None) -> Iterator[Sequence[Any]]:
        """Primary-key values of live rows (keys only: the cheap side of delete detection),
        optionally of an integer key range [lo, hi)."""
        ranged = self._key_range(lo, hi) if (lo, hi) != (None, None) else []
        stmt = sa.select(*(self._col[c] for c in self.keys)).where(*self._filter(), *self._live(), *ranged)
        return self._stream(stmt)

    def _key_range(self, lo: int | None, hi: int | None) -> list[sa.ColumnElement[bool]]:
        (key,) = self.keys
        conditions = []
        if lo is not None:
            conditions.append(self._col[key] >= lo)
        if hi is not None:
            conditions.append(self._col[key] < hi)
        return conditions

    def range_stats(self, lo: int | None, hi: int | None, modulus: int, with_hash: bool) -> tuple[int, ...]:
        """The range digest of live rows with an integer key in [lo, hi).

        (count, sum of key % modulus) — from the primary-key index alone — and, ``with_hash``,
        the sum of the source's row hashes, which also sees updates (a scan of the range).
        """
        (key,) = self.keys
        aggregates = [sa.func.count(), sa.func.coalesce(sa.func.sum(self._col[key] % modulus), 0)]
        if with_hash:
            assert self.row_hash is not None
            aggregates.append(sa.func.coalesce(sa.func.sum(self.row_hash), 0))
        stmt = (
            sa.select(*aggregates)
            .select_from(self.table)
            .where(*self._filter(), *self._live(), *self._key_range(lo, hi))
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).one()
        return tuple(int(v) for v in row)

    def rows_in_range(
        self, lo: int | None, hi: int | None, with_hash: bool = False
    ) -> Iterator[Sequence[Any]]:
        stmt = sa.select(*self._selected(with_hash)).where(
            *self._filter(), *self._live(), *self._key_range(lo, hi)
        )
        return self._stream(stmt)


def _register_sqlite_hash(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function("edu_row_hash", -1, _sqlite_row_hash, deterministic=True)
