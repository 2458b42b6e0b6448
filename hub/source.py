"""Reading a subscription's source table: only the listed columns, only the filtered rows.

Queries are built with SQLAlchemy Core, so identifiers are quoted by the dialect and every
filter value is a bound parameter. The row filter is operator configuration (trusted to name
columns of the source table, not to inject SQL): it cannot contain SQL text at all.
Results stream from server-side cursors (``stream_results`` + ``yield_per``), so memory stays
bounded whatever the table size.
"""

from __future__ import annotations

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

    def rows(self) -> Iterator[Sequence[Any]]:
        """Every live row, in dictionary column order."""
        stmt = sa.select(*(self._col[c] for c in self.columns)).where(*self._filter(), *self._live())
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

    def live_keys(self) -> Iterator[Sequence[Any]]:
        """Primary-key values of every live row (keys only: the cheap side of delete detection)."""
        stmt = sa.select(*(self._col[c] for c in self.keys)).where(*self._filter(), *self._live())
        return self._stream(stmt)

    def _key_range(self, lo: int | None, hi: int | None) -> list[sa.ColumnElement[bool]]:
        (key,) = self.keys
        conditions = []
        if lo is not None:
            conditions.append(self._col[key] >= lo)
        if hi is not None:
            conditions.append(self._col[key] < hi)
        return conditions

    def range_stats(self, lo: int | None, hi: int | None, modulus: int) -> tuple[int, int]:
        """(count, sum of key % modulus) of live rows with an integer key in [lo, hi): a range digest."""
        (key,) = self.keys
        stmt = (
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(self._col[key] % modulus), 0))
            .select_from(self.table)
            .where(*self._filter(), *self._live(), *self._key_range(lo, hi))
        )
        with self.engine.connect() as conn:
            count, total = conn.execute(stmt).one()
        return int(count), int(total)

    def rows_in_range(self, lo: int | None, hi: int | None) -> Iterator[Sequence[Any]]:
        stmt = sa.select(*(self._col[c] for c in self.columns)).where(
            *self._filter(), *self._live(), *self._key_range(lo, hi)
        )
        return self._stream(stmt)
