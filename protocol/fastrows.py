"""The compiled fast path for checking and hashing records (protocol/csrc/native.c).

A :class:`FastRows` is built from a table's columns when every column is of a kind the C
code knows exactly (all but floating point; of the declared formats, the ISO date and
date-time). Its methods parse, validate and hash a whole batch in one call with the GIL
released: a snapshot's upserts, a delta's upserts and deletes (returning their keys), or rows
read back from a database. It only ever accepts: a batch holding anything it is not sure of
(a bad value, a delete in a snapshot, a quoted value it cannot read, a fraction Python's
``datetime`` would refuse) returns False (None) with the digest untouched, and the caller
runs the Python path (:class:`protocol.canonical.ColumnValidator`), which decides and names
the row. tests/test_fastrows.py checks, value by value, that C never accepts what Python
refuses, and that both give the same digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from protocol import _native
from protocol.canonical import (
    UNCONSTRAINED_FRAC_DIGITS,
    UNCONSTRAINED_INT_DIGITS,
    ColumnSpec,
    Family,
    compile_format,
    key_indexes,
)
from protocol.digest import LtHash, hash_keys

_TEXT, _INTEGER, _DECIMAL, _DATE, _TIMESTAMP, _TIMESTAMPTZ, _BINARY, _BOOLEAN = range(1, 9)
_NO_FORMAT, _DATE_FORMAT, _DATETIME_FORMAT = 0, 1, 2
SNAPSHOT, DELTA, STORED = 0, 1, 2
_FORMATS = {
    "YYYY-MM-DD": (_DATE_FORMAT, r"(?P<year>\d{4})\-(?P<month>\d{2})\-(?P<day>\d{2})"),
    "YYYY-MM-DD HH:MM:SS": (
        _DATETIME_FORMAT,
        r"(?P<year>\d{4})\-(?P<month>\d{2})\-(?P<day>\d{2})"
        r"\ (?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})",
    ),
}
_FORMATS["YYYY-MM-DD HH24:MI:SS"] = _FORMATS["YYYY-MM-DD HH:MM:SS"]
_INT64 = (-(2**63), 2**63 - 1)


def _fractions_accepted() -> int:
    """Bit n set when this Python's ``datetime.fromisoformat`` takes n fraction digits (3.10
    takes only 3 and 6; 3.11 more): C must refuse what the Python check would refuse."""
    mask = 0
    for digits in range(1, 10):
        try:
            datetime.fromisoformat("2000-01-01 00:00:00." + "1" * digits)
            datetime.fromisoformat("2000-01-01 00:00:00." + "1" * digits + "+00:00")
        except ValueError:
            continue
        mask |= 1 << digits
    return mask


_FRACTIONS_ACCEPTED = _fractions_accepted()

ColumnPlan = tuple[int, int, int, int, int, int, int, int, int, int]


def _format_code(column: ColumnSpec) -> int | None:
    if not column.format:
        return _NO_FORMAT
    check = compile_format(column.format)
    if check is None:  # descriptive only: the Python check ignores it too
        return _NO_FORMAT
    known = _FORMATS.get(" ".join(column.format.upper().split()))
    if known is None or check.regex.pattern != known[1]:
        return None
    return known[0]


def column_plan(column: ColumnSpec) -> ColumnPlan | None:
    """The C description of one column, or None when C does not check this kind."""
    fmt = _format_code(column)
    if fmt is None:
        return None
    ctype, not_null = column.type, int(column.not_null)
    family = ctype.family
    if family is Family.TEXT:
        length = -1 if ctype.length is None else ctype.length
        return (_TEXT, not_null, fmt, length, int(ctype.length_in_bytes), int(ctype.fixed), 0, 0, 0, 0)
    if family is Family.INTEGER:
        low, high = max(ctype.int_min, _INT64[0]), min(ctype.int_max, _INT64[1])
        return (_INTEGER, not_null, fmt, 0, 0, 0, 0, low, high, 0)
    if family is Family.DECIMAL:
        precision = -1 if ctype.precision is None else ctype.precision
        scale = ctype.scale or 0
        return (
            _DECIMAL, not_null, fmt, precision, scale,
            UNCONSTRAINED_INT_DIGITS, UNCONSTRAINED_FRAC_DIGITS, 0, 0, 0,
        )  # fmt: skip
    if family is Family.DATE:
        return (_DATE, not_null, fmt, 0, 0, 0, 0, 0, 0, 0)
    if family is Family.TIMESTAMP or family is Family.TIMESTAMPTZ:
        kind = _TIMESTAMP if family is Family.TIMESTAMP else _TIMESTAMPTZ
        return (kind, not_null, fmt, ctype.fraction, 0, 0, 0, 0, 0, _FRACTIONS_ACCEPTED)
    if family is Family.BINARY:
        length = -1 if ctype.length is None else ctype.length
        return (_BINARY, not_null, fmt, length, 0, 0, 0, 0, 0, 0)
    if family is Family.BOOLEAN:
        return (_BOOLEAN, not_null, fmt, 0, 0, 0, 0, 0, 0, 0)
    return None  # FLOAT: its canonical form is only checked in Python


class FastRows:
    """Check-and-hash of upsert records of one table in C (see the module docstring)."""

    def __init__(self, plan: tuple[tuple[int, ...], tuple[ColumnPlan, ...]]) -> None:
        self._plan = plan

    @classmethod
    def for_columns(cls, columns: Sequence[ColumnSpec]) -> FastRows | None:
        """None when some column is of a kind only the Python path checks."""
        plans = [column_plan(c) for c in columns]
        keys = key_indexes(columns)
        if not keys or len(keys) > 16 or any(p is None for p in plans):
            return None
        return cls((tuple(keys), tuple(p for p in plans if p is not None)))

    def check_and_hash(self, records: Sequence[str], digest: LtHash) -> bool:
        """True: all ``records`` (framed ``U,...`` records of a snapshot) were valid and are
        in ``digest``."""
        return self._check(records, digest, SNAPSHOT) is True

    def check_and_hash_delta(self, records: Sequence[str], digest: LtHash) -> list[bytes] | None:
        """Framed upserts and deletes: every record's key (in order) when all were valid and
        the upserts are in ``digest``; None when the Python path must decide."""
        keys = self._check(records, digest, DELTA)
        return keys if isinstance(keys, list) else None

    def hash_stored(self, rows: Sequence[str], digest: LtHash) -> bool:
        """Rows read back from a database as canonical CSV text (no op): True when every value
        is canonical for its column and all rows are in ``digest``."""
        return self._check(rows, digest, STORED) is True

    def _check(self, records: Sequence[str], digest: LtHash, mode: int) -> bool | list[bytes]:
        item_key, bucket_key = hash_keys()
        return _native.check_rows(
            records, self._plan, digest.lanes, digest.counts, item_key, bucket_key, mode
        )
