"""Declared types, canonical text values and the CSV row codec of table payloads.

Every table value travels, is validated and is hashed in ONE canonical text form per
declared type, so that the platform's change capture, the package, the agent's store and
``verify`` all agree byte for byte (row digests hash this form; see docs/tables.md for the
exact rules and the per-database type mapping).

* :func:`parse_type` turns a data-dictionary type as providers write it (``VARCHAR2(50)``,
  ``NUMBER(10,2)``, ``DATE``, ``TIMESTAMP(3) WITH TIME ZONE``, ``BYTEA``...) into a
  :class:`ColumnType`; an unknown type is a :class:`TypeSpecError`.
* :func:`canonicalize` turns a Python/DB-API value into the canonical text (None = NULL).
* :class:`ColumnValidator` checks canonical text against a column (NOT NULL, length in
  characters, precision/scale, the dictionary's format) a whole column of a batch at once.
* :func:`encode_record` / :func:`iter_records` write and stream-parse the CSV payload
  (``op`` field first; NULL = empty unquoted field; every non-NULL value quoted).
"""

from __future__ import annotations

import enum
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Context, Decimal, InvalidOperation
from itertools import repeat
from typing import IO, Any, ClassVar, NamedTuple

from protocol import _native
from protocol.errors import ProtocolError

MAX_DECIMAL_PRECISION = 38
"""Oracle's and DM's NUMBER limit; the common denominator of every target."""
UNCONSTRAINED_INT_DIGITS = 35
UNCONSTRAINED_FRAC_DIGITS = 30
"""Unconstrained ``NUMBER`` values must fit MySQL's ``DECIMAL(65,30)``."""
MAX_FRACTION_DIGITS = 6
"""Microseconds: what PostgreSQL, MySQL and Python keep. ``TIMESTAMP(9)`` is capped."""

_EXACT = Context(prec=200, Emax=999_999, Emin=-999_999)
"""Decimal arithmetic wide enough that quantize/normalize never round a storable value."""

OP_UPSERT = "U"
OP_DELETE = "D"


class CanonicalError(ProtocolError, ValueError):
    """Root of canonical-form errors."""


class TypeSpecError(CanonicalError):
    """A declared type is unknown or has unsupported parameters."""


class ValueError_(CanonicalError):
    """A value is not valid (or not canonical) for its column.

    ``column`` names the column, ``reason`` says what is wrong; ``key`` is filled by
    callers that know the row's primary key.
    """

    def __init__(self, column: str, reason: str, *, key: Sequence[str | None] | None = None) -> None:
        self.column = column
        self.reason = reason
        self.key = tuple(key) if key is not None else None
        where = f" (row key {list(self.key)!r})" if self.key is not None else ""
        super().__init__(f"column {column!r}{where}: {reason}")


InvalidValueError = ValueError_


class RecordFormatError(CanonicalError):
    """The CSV payload is malformed (bad quoting, wrong field count, unknown op)."""


class Family(str, enum.Enum):
    """What a declared type means for canonical text and for the targets."""

    TEXT = "text"
    INTEGER = "integer"  # binary integers with a fixed range
    DECIMAL = "decimal"  # exact numbers, NUMBER(p,s)
    FLOAT = "float"  # IEEE 754 double
    DATE = "date"  # pure calendar date
    TIMESTAMP = "timestamp"  # date + time, no zone (Oracle DATE = TIMESTAMP(0))
    TIMESTAMPTZ = "timestamptz"  # an instant; canonical in UTC
    BINARY = "binary"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class ColumnType:
    """A parsed declared type.

    ``length`` is characters (or bytes when ``length_in_bytes``) for TEXT and bytes for
    BINARY; None means unbounded (CLOB, TEXT, BLOB). ``precision``/``scale`` are set for
    DECIMAL (None = unconstrained ``NUMBER``); ``fraction`` is the fractional-second digits
    of TIMESTAMP/TIMESTAMPTZ; ``int_min``/``int_max`` bound INTEGER.
    """

    family: Family
    declared: str
    length: int | None = None
    length_in_bytes: bool = False
    fixed: bool = False  # CHAR(n): blank-padded semantics, canonical form has no trailing blanks
    precision: int | None = None
    scale: int | None = None
    fraction: int = 0
    int_min: int = 0
    int_max: int = 0


_INT_RANGES: dict[str, tuple[int, int]] = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INT2": (-(2**15), 2**15 - 1),
    "MEDIUMINT": (-(2**23), 2**23 - 1),
    "INT": (-(2**31), 2**31 - 1),
    "INT4": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "INT8": (-(2**63), 2**63 - 1),
}
_TEXT_UNBOUNDED = {"CLOB", "NCLOB", "TEXT", "TINYTEXT", "MEDIUMTEXT", "LONGTEXT", "LONG"}
_BINARY_UNBOUNDED = {"BLOB", "TINYBLOB", "MEDIUMBLOB", "LONGBLOB", "BYTEA", "LONG RAW", "IMAGE"}
_FLOATS = {"FLOAT", "REAL", "DOUBLE", "DOUBLE PRECISION", "BINARY_FLOAT", "BINARY_DOUBLE", "FLOAT4", "FLOAT8"}
_VARCHARS = {
    "VARCHAR2",
    "VARCHAR",
    "NVARCHAR2",
    "NVARCHAR",
    "CHARACTER VARYING",
    "NATIONAL CHARACTER VARYING",
}
_CHARS = {"CHAR", "NCHAR", "CHARACTER", "BPCHAR", "NATIONAL CHARACTER"}

_TYPE_RE = re.compile(
    r"^(?P<name>[A-Z_][A-Z0-9_]*(?: (?:VARYING|PRECISION|RAW|CHARACTER|CHARACTER VARYING))?)"
    r"(?: ?\( ?(?P<args>[^()]*?) ?\))?"
    r"(?P<rest>(?: [A-Z]+)*)$"
)


def parse_type(declared: str, *, format: str | None = None) -> ColumnType:
    """Parse a declared type; ``format`` (the dictionary's 格式要求) decides Oracle ``DATE``.

    ``DATE`` follows Oracle (a date *and* a time of day, canonical ``YYYY-MM-DD HH:MM:SS``)
    unless the column's format is exactly ``YYYY-MM-DD``: then it is a pure date.
    """
    text = " ".join(declared.strip().upper().split())
    match = _TYPE_RE.match(text)
    if not match or not text:
        raise TypeSpecError(f"unknown declared type {declared!r}")
    name, rest = match["name"], match["rest"].strip()
    args = [a.strip() for a in match["args"].split(",")] if match["args"] is not None else []

    def bad(reason: str) -> TypeSpecError:
        return TypeSpecError(f"declared type {declared!r}: {reason}")

    def one_int(low: int, high: int, default: int | None = None) -> int | None:
        if not args:
            return default
        if len(args) != 1 or not args[0].isdigit():
            raise bad("expected one integer argument")
        value = int(args[0])
        if not low <= value <= high:
            raise bad(f"argument {value} outside {low}..{high}")
        return value

    if name in _VARCHARS or name in _CHARS:
        semantics = None
        if args and len(args) == 1 and " " in args[0]:
            args[0], semantics = args[0].split(" ", 1)
            if semantics not in ("BYTE", "CHAR"):
                raise bad(f"unknown length semantics {semantics!r}")
        if rest:
            raise bad(f"unexpected {rest!r}")
        fixed = name in _CHARS
        length = one_int(1, 2**31 - 1, default=1 if fixed else None)
        if length is None:
            if name in ("VARCHAR2", "NVARCHAR2"):
                raise bad("VARCHAR2 needs a length")
            return ColumnType(Family.TEXT, text)
        return ColumnType(Family.TEXT, text, length=length, length_in_bytes=semantics == "BYTE", fixed=fixed)
    if name in _TEXT_UNBOUNDED and not args and not rest:
        return ColumnType(Family.TEXT, text)
    if name in ("NUMBER", "DECIMAL", "NUMERIC", "DEC"):
        if rest:
            raise bad(f"unexpected {rest!r}")
        return _decimal_type(text, args, bad)
    if name == "INTEGER" and not args and not rest:
        # Oracle-style dictionaries: INTEGER is NUMBER(38), not a 32-bit int.
        return ColumnType(Family.DECIMAL, text, precision=MAX_DECIMAL_PRECISION, scale=0)
    if name in _INT_RANGES:
        if args and not (len(args) == 1 and args[0].isdigit()):  # MySQL display width: ignored
            raise bad("expected a display width")
        low, high = _INT_RANGES[name]
        if rest == "UNSIGNED":
            low, high = 0, high * 2 + 1
        elif rest:
            raise bad(f"unexpected {rest!r}")
        return ColumnType(Family.INTEGER, text, int_min=low, int_max=high)
    if name in _FLOATS and not rest:
        one_int(1, 126)
        return ColumnType(Family.FLOAT, text)
    if name == "DATE" and not args and not rest:
        if format is not None and " ".join(format.upper().split()) == "YYYY-MM-DD":
            return ColumnType(Family.DATE, text)
        return ColumnType(Family.TIMESTAMP, text, fraction=0)
    if name in ("DATETIME", "DATETIME2", "TIMESTAMP", "TIMESTAMPTZ"):
        default = 0 if name == "DATETIME" else 6
        digits = one_int(0, 9, default=default)
        assert digits is not None
        zoned = name == "TIMESTAMPTZ" or rest in ("WITH TIME ZONE", "WITH LOCAL TIME ZONE")
        if rest and rest not in ("WITH TIME ZONE", "WITH LOCAL TIME ZONE", "WITHOUT TIME ZONE"):
            raise bad(f"unexpected {rest!r}")
        family = Family.TIMESTAMPTZ if zoned else Family.TIMESTAMP
        return ColumnType(family, text, fraction=min(digits, MAX_FRACTION_DIGITS))
    if name in ("RAW", "VARBINARY", "BINARY") and not rest:
        length = one_int(1, 2**31 - 1)
        if length is None and name == "RAW":
            raise bad("RAW needs a length")
        return ColumnType(Family.BINARY, text, length=length)
    if name in _BINARY_UNBOUNDED and not args and not rest:
        return ColumnType(Family.BINARY, text)
    if name in ("BOOLEAN", "BOOL") and not args and not rest:
        return ColumnType(Family.BOOLEAN, text)
    raise TypeSpecError(f"unknown declared type {declared!r}")


def _decimal_type(text: str, args: list[str], bad: Callable[[str], TypeSpecError]) -> ColumnType:
    if not args:
        return ColumnType(Family.DECIMAL, text)
    if len(args) > 2:
        raise bad("expected (precision[, scale])")
    if args[0] == "*":
        precision = MAX_DECIMAL_PRECISION
    elif args[0].isdigit():
        precision = int(args[0])
    else:
        raise bad(f"precision {args[0]!r} is not a number")
    scale_text = args[1] if len(args) == 2 else "0"
    if not re.fullmatch(r"-?\d+", scale_text):
        raise bad(f"scale {scale_text!r} is not a number")
    scale = int(scale_text)
    if not 1 <= precision <= MAX_DECIMAL_PRECISION:
        raise bad(f"precision must be 1..{MAX_DECIMAL_PRECISION}")
    if scale < 0 or scale > precision:
        raise bad("scale must be 0..precision (negative scale and scale > precision are not supported)")
    return ColumnType(Family.DECIMAL, text, precision=precision, scale=scale)


# ---------------------------------------------------------------- columns


@dataclass(frozen=True)
class ColumnSpec:
    """One data-dictionary entry: what the store creates and the validator enforces."""

    name: str
    type: ColumnType
    not_null: bool = False
    primary_key: bool = False
    format: str | None = None
    label: str | None = None
    meaning: str | None = None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ColumnSpec:
        """Build from a header schema entry (``name``, ``type``, ``not_null``, ``primary_key``...)."""
        declared = entry.get("type", entry.get("declared_type"))
        if not isinstance(declared, str):
            raise TypeSpecError(f"column {entry.get('name')!r} has no declared type")
        fmt = entry.get("format") or None
        primary = bool(entry.get("primary_key", False))
        return cls(
            name=str(entry["name"]),
            type=parse_type(declared, format=fmt),
            not_null=bool(entry.get("not_null", False)) or primary,
            primary_key=primary,
            format=fmt,
            label=entry.get("label") or None,
            meaning=entry.get("meaning") or None,
        )


def columns_from_schema(schema: Iterable[Mapping[str, Any]]) -> list[ColumnSpec]:
    """Columns of a header's data dictionary, checked: unique names, at least one key column."""
    columns = [ColumnSpec.from_dict(entry) for entry in schema]
    names = [c.name for c in columns]
    if not columns:
        raise TypeSpecError("schema has no columns")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TypeSpecError(f"duplicate column names {duplicates!r}")
    if not any(c.primary_key for c in columns):
        raise TypeSpecError("schema has no primary key column")
    return columns


# ---------------------------------------------------------------- canonical values


def canonicalize(value: object, column: ColumnSpec | ColumnType) -> str | None:
    """The canonical text of a Python/DB-API value for a column; None stays None (NULL).

    Accepts what drivers return (str, int, Decimal, float, datetime, date, bytes, bool) and
    canonical or ISO text. Never rounds: a value that does not fit raises ValueError_.
    """
    ctype = column.type if isinstance(column, ColumnSpec) else column
    name = column.name if isinstance(column, ColumnSpec) else ctype.declared
    if value is None:
        return None
    try:
        return _CANONICALIZERS[ctype.family](value, ctype)
    except ValueError_:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValueError_(name, f"cannot represent {value!r} as {ctype.declared}: {exc}") from exc


def _canon_text(value: object, ctype: ColumnType) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value.rstrip(" ") if ctype.fixed else value


def _to_decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("boolean is not a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return Decimal(repr(value))
    if isinstance(value, (int, Decimal)):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("not a number") from None
    else:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError("not a finite number")
    return result


def format_decimal(number: Decimal, scale: int | None) -> str:
    """Plain notation, never an exponent; ``scale`` digits after the point, or minimal when None."""
    if scale is None:
        number = number.normalize(_EXACT) if number else Decimal(0)
        text = format(number, "f")
    else:
        quantized = number.quantize(Decimal(1).scaleb(-scale), context=_EXACT)
        if quantized != number:
            raise ValueError(f"has more than {scale} decimal places")
        text = format(quantized, "f")
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def _canon_decimal(value: object, ctype: ColumnType) -> str:
    text = format_decimal(_to_decimal(value), ctype.scale)
    _check_decimal_digits(text, ctype)
    return text


def _check_decimal_digits(text: str, ctype: ColumnType) -> None:
    whole, _, frac = text.lstrip("-").partition(".")
    int_digits = 0 if whole == "0" else len(whole)
    if ctype.precision is not None:
        allowed = ctype.precision - (ctype.scale or 0)
        if int_digits > allowed:
            raise ValueError(f"more than {allowed} digits before the decimal point")
    elif int_digits > UNCONSTRAINED_INT_DIGITS or len(frac) > UNCONSTRAINED_FRAC_DIGITS:
        raise ValueError(
            f"unconstrained NUMBER limited to {UNCONSTRAINED_INT_DIGITS} integer and "
            f"{UNCONSTRAINED_FRAC_DIGITS} fraction digits"
        )


def _canon_integer(value: object, ctype: ColumnType) -> str:
    number = _to_decimal(value)
    if number != number.to_integral_value():
        raise ValueError("not an integer")
    integer = int(number)
    if not ctype.int_min <= integer <= ctype.int_max:
        raise ValueError(f"outside {ctype.int_min}..{ctype.int_max}")
    return str(integer)


def format_float(number: float) -> str:
    """Shortest round-trip digits (Python ``repr``), ``-0.0`` as ``0.0``; no NaN/infinity."""
    if not math.isfinite(number):
        raise ValueError("NaN and infinity cannot be stored by every target")
    return repr(number + 0.0) if number == 0 else repr(number)


def _canon_float(value: object, ctype: ColumnType) -> str:
    if isinstance(value, bool):
        raise TypeError("boolean is not a number")
    if isinstance(value, (int, float, Decimal)):
        return format_float(float(value))
    if isinstance(value, str):
        return format_float(float(value.strip()))
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _parse_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        return datetime.fromisoformat(value.strip())
    raise TypeError(f"expected a date/time, got {type(value).__name__}")


def format_timestamp(moment: datetime, fraction: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` plus ``.ffffff`` with trailing zeros dropped (PostgreSQL's style)."""
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if moment.microsecond:
        micro = f"{moment.microsecond:06d}".rstrip("0")
        if len(micro) > fraction:
            raise ValueError(f"has more than {fraction} fractional second digits")
        text += "." + micro
    return text


def _canon_timestamp(value: object, ctype: ColumnType) -> str:
    moment = _parse_datetime(value)
    if moment.tzinfo is not None:
        raise ValueError("has a time zone but the column has none")
    return format_timestamp(moment, ctype.fraction)


def _canon_timestamptz(value: object, ctype: ColumnType) -> str:
    moment = _parse_datetime(value)
    if moment.tzinfo is None:  # drivers of zone-less storage (MySQL DATETIME) hold UTC
        moment = moment.replace(tzinfo=timezone.utc)
    moment = moment.astimezone(timezone.utc)
    return format_timestamp(moment, ctype.fraction) + "+00:00"


def _canon_date(value: object, ctype: ColumnType) -> str:
    if isinstance(value, datetime) or (isinstance(value, str) and len(value.strip()) > 10):
        moment = _parse_datetime(value)
        if moment.tzinfo is not None or moment.time() != datetime.min.time():
            raise ValueError("a pure date column cannot hold a time of day")
        value = moment.date()
    if isinstance(value, str):
        value = date.fromisoformat(value.strip())
    if not isinstance(value, date):
        raise TypeError(f"expected a date, got {type(value).__name__}")
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def _canon_binary(value: object, ctype: ColumnType) -> str:
    if isinstance(value, str):
        if not value.startswith("\\x"):
            raise ValueError("binary text must start with \\x")
        data = bytes.fromhex(value[2:])
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    if ctype.length is not None and len(data) > ctype.length:
        raise ValueError(f"longer than {ctype.length} bytes")
    return "\\x" + data.hex()


_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def _canon_boolean(value: object, ctype: ColumnType) -> str:
    if isinstance(value, (bool, int)) and value in (0, 1):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return "true" if value.strip().lower() in _TRUE else "false"
    raise ValueError("not a boolean")


_CANONICALIZERS: dict[Family, Callable[[object, ColumnType], str]] = {
    Family.TEXT: _canon_text,
    Family.INTEGER: _canon_integer,
    Family.DECIMAL: _canon_decimal,
    Family.FLOAT: _canon_float,
    Family.DATE: _canon_date,
    Family.TIMESTAMP: _canon_timestamp,
    Family.TIMESTAMPTZ: _canon_timestamptz,
    Family.BINARY: _canon_binary,
    Family.BOOLEAN: _canon_boolean,
}


def canonicalizer(column: ColumnSpec) -> Callable[[object], str | None]:
    """A fast :func:`canonicalize` for one column, for values read back from a database.

    The common driver types take a short path (a ``str`` for text, a ``Decimal`` already at
    the declared scale, a ``datetime``); anything else goes through :func:`canonicalize`,
    so the result is always identical to it.
    """
    ctype = column.type
    family = ctype.family

    def slow(value: object) -> str | None:
        return canonicalize(value, column)

    if family is Family.TEXT and not ctype.fixed:

        def text(value: object) -> str | None:
            return value if type(value) is str else slow(value)

        return text
    if family is Family.DECIMAL and ctype.scale is not None and ctype.precision is not None:
        scale, whole = ctype.scale, ctype.precision - ctype.scale

        def decimal(value: object) -> str | None:
            if type(value) is Decimal and value.as_tuple().exponent == -scale and value.is_finite():
                digits = format(value, "f")
                fits = len(digits.lstrip("-").partition(".")[0].lstrip("0")) <= whole
                if fits and (value or not digits.startswith("-")):
                    return digits
            return slow(value)

        return decimal
    if family is Family.TIMESTAMP:
        any_fraction = ctype.fraction >= 6  # every microsecond value fits

        def timestamp(value: object) -> str | None:
            if type(value) is datetime and value.tzinfo is None and (any_fraction or not value.microsecond):
                return format_timestamp(value, 6)
            return slow(value)

        return timestamp
    if family is Family.DATE:

        def day(value: object) -> str | None:
            return value.isoformat() if type(value) is date else slow(value)

        return day
    return slow


def to_python(text: str | None, ctype: ColumnType) -> object:
    """The Python value a DB-API driver accepts for canonical text (stores bind these)."""
    if text is None:
        return None
    family = ctype.family
    if family is Family.TEXT:
        return text
    if family is Family.INTEGER:
        return int(text)
    if family is Family.DECIMAL:
        return Decimal(text)
    if family is Family.FLOAT:
        return float(text)
    if family is Family.DATE:
        return date.fromisoformat(text)
    if family is Family.TIMESTAMP:
        return datetime.fromisoformat(text)
    if family is Family.TIMESTAMPTZ:
        return datetime.fromisoformat(text)
    if family is Family.BINARY:
        return bytes.fromhex(text[2:])
    return text == "true"


# ---------------------------------------------------------------- validation


_FORMAT_TOKENS = ["YYYY", "HH24", "HH", "MI", "MM", "DD", "SS", "FF"]
_TOKEN_GROUPS = {
    "YYYY": "year",
    "HH24": "hour",
    "HH": "hour",
    "MI": "minute",
    "MM": "month",
    "DD": "day",
    "SS": "second",
    "FF": "fraction",
}
_GROUP_REGEX = {"year": r"\d{4}", "fraction": r"\d{1,9}"}
_TWO_DIGITS = r"\d{2}"


class FormatCheck:
    """A compiled date/time format: ``check(value)`` gives a reason or None; ``batch_ok(values)``."""

    _ISO: ClassVar[dict[str, Callable[[str], object]]] = {
        "YYYY-MM-DD": date.fromisoformat,
        "YYYY-MM-DD HH:MM:SS": datetime.fromisoformat,
        "YYYY-MM-DD HH24:MI:SS": datetime.fromisoformat,
    }

    def __init__(self, fmt: str, pattern: str) -> None:
        self.fmt = fmt
        self.regex = re.compile(pattern)
        self._iso = self._ISO.get(" ".join(fmt.upper().split()))

    def __call__(self, value: str) -> str | None:
        match = self.regex.fullmatch(value)
        if match is None:
            return f"{_short(value)} does not match the format {self.fmt!r}"
        parts = match.groupdict()
        try:
            datetime(
                int(parts.get("year") or 2000),
                int(parts.get("month") or 1),
                int(parts.get("day") or 1),
                int(parts.get("hour") or 0),
                int(parts.get("minute") or 0),
                int(parts.get("second") or 0),
            )
        except ValueError as exc:
            return f"{_short(value)} is not a valid date/time for {self.fmt!r}: {exc}"
        return None

    def batch_ok(self, values: list[str]) -> bool:
        """All values match (C-level loops for the ISO-shaped formats)."""
        if not all(map(self.regex.fullmatch, values)):
            return False
        if self._iso is not None:
            try:
                list(map(self._iso, values))
            except ValueError:
                return False
            return True
        return not any(map(self, values))


def compile_format(fmt: str) -> FormatCheck | None:
    """A checker for a date/time format such as ``YYYY-MM-DD HH:MM:SS``; None if not one.

    ``MM`` right after an hour means minutes (the seed writes ``HH:MM:SS``); ``HH24``/``MI``/
    ``FF`` are Oracle's spellings. The checker returns None when a value matches (calendar
    validity included), else the reason. Other formats are descriptive only (documented).
    """
    pattern, seen, rest = "", set(), fmt.strip()
    while rest:
        part = next((t for t in _FORMAT_TOKENS if rest.upper().startswith(t)), None)
        if part is None:
            char = rest[0]
            if char.isascii() and char.isalnum():
                return None
            pattern += re.escape(char)
            rest = rest[1:]
            continue
        group = _TOKEN_GROUPS[part]
        if part == "MM" and "hour" in seen and "minute" not in seen:
            group = "minute"
        if group in seen:
            return None
        seen.add(group)
        pattern += f"(?P<{group}>{_GROUP_REGEX.get(group, _TWO_DIGITS)})"
        rest = rest[len(part) :]
    if not seen:
        return None
    return FormatCheck(fmt, pattern)


def _decimal_regex(ctype: ColumnType) -> re.Pattern[str]:
    if ctype.precision is None:
        body = (
            rf"(?:0|[1-9]\d{{0,{UNCONSTRAINED_INT_DIGITS - 1}}})"
            rf"(?:\.\d{{0,{UNCONSTRAINED_FRAC_DIGITS - 1}}}[1-9])?"
        )
    else:
        scale = ctype.scale or 0
        whole = ctype.precision - scale
        digits = r"0" if whole == 0 else rf"(?:0|[1-9]\d{{0,{whole - 1}}})"
        body = digits + (rf"\.\d{{{scale}}}" if scale else "")
    return re.compile(rf"(?!-0(?:\.0*)?$)-?{body}")


_TS_RE = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}"


_SEEN_LIMIT = 20_000
"""Valid values remembered per column (low-cardinality columns only)."""


class ColumnValidator:
    """Checks canonical text values of one column, a batch at a time.

    ``check(values)`` returns the index of the first bad value and the reason, or None;
    the common case (all valid) runs in C-level ``map`` loops.
    """

    def __init__(self, column: ColumnSpec) -> None:
        self.column = column
        self._seen: set[str] = set()
        ctype = column.type
        self._format = compile_format(column.format) if column.format else None
        family = ctype.family
        self._regex: re.Pattern[str] | None = None
        self._parse: Callable[[str], object] | None = None
        if family is Family.DECIMAL:
            self._regex = _decimal_regex(ctype)
        elif family is Family.INTEGER:
            self._regex = re.compile(r"(?!-0$)-?(?:0|[1-9]\d*)")
        elif family is Family.TIMESTAMP:
            frac = rf"(?:\.\d{{0,{ctype.fraction - 1}}}[1-9])?" if ctype.fraction else ""
            self._regex = re.compile(_TS_RE + frac)
            self._parse = datetime.fromisoformat
        elif family is Family.TIMESTAMPTZ:
            frac = rf"(?:\.\d{{0,{ctype.fraction - 1}}}[1-9])?" if ctype.fraction else ""
            self._regex = re.compile(_TS_RE + frac + r"\+00:00")
            self._parse = datetime.fromisoformat
        elif family is Family.DATE:
            self._regex = re.compile(r"\d{4}-\d{2}-\d{2}")
            self._parse = date.fromisoformat
        elif family is Family.BINARY:
            self._regex = re.compile(r"\\x(?:[0-9a-f]{2})*")
        elif family is Family.BOOLEAN:
            self._regex = re.compile(r"true|false")
        elif family is Family.FLOAT:
            self._regex = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]\d+)?")

    def check(self, values: Sequence[str | None]) -> tuple[int, str] | None:
        """First (index, reason) of an invalid value in ``values``, or None if all are valid."""
        present = [v for v in values if v is not None]
        if len(present) != len(values) and self.column.not_null:
            return values.index(None), "is NULL but the column is NOT NULL"
        if not present:
            return None
        distinct = set(present)
        distinct.difference_update(self._seen)
        if not distinct:
            return None
        if self._batch_ok(list(distinct)):
            # Low-cardinality columns (codes, departments, dates) repeat values: remember the
            # valid ones (bounded) so later batches skip them. Validity is per value.
            if len(distinct) * 8 <= len(present) and len(self._seen) < _SEEN_LIMIT:
                self._seen.update(distinct)
            return None
        for index, value in enumerate(values):
            if value is not None:
                reason = self.reason(value)
                if reason is not None:
                    return index, reason
        raise AssertionError("batch check failed but no single value did")  # pragma: no cover

    def _batch_ok(self, present: list[str]) -> bool:
        ctype = self.column.type
        try:
            if self._regex is not None and not all(map(self._regex.fullmatch, present)):
                return False
            if self._parse is not None:
                list(map(self._parse, present))
            if ctype.family is Family.TEXT:
                joined = "".join(present)
                if "\x00" in joined or (ctype.fixed and any(v.endswith(" ") for v in present)):
                    return False
                joined.encode("utf-8")  # lone surrogates cannot be stored
                if ctype.length is not None:
                    if ctype.length_in_bytes:
                        if max(len(v.encode("utf-8")) for v in present) > ctype.length:
                            return False
                    elif max(map(len, present)) > ctype.length:
                        return False
            elif ctype.family is Family.BINARY and ctype.length is not None:
                if (max(map(len, present)) - 2) // 2 > ctype.length:
                    return False
            elif ctype.family is Family.INTEGER:
                limit = min(len(str(ctype.int_max)), len(str(ctype.int_min))) - 1
                if not all(ctype.int_min <= int(v) <= ctype.int_max for v in present if len(v) >= limit):
                    return False
            elif ctype.family is Family.FLOAT:
                return all(self.reason(v) is None for v in present)
        except (ValueError, UnicodeError):
            return False
        if self._format is not None:
            return self._format.batch_ok(present)
        return True

    def reason(self, value: str) -> str | None:
        """Why ``value`` is not valid canonical text for the column, or None."""
        ctype = self.column.type
        if self._regex is not None and self._regex.fullmatch(value) is None:
            return f"{_short(value)} is not the canonical form of {ctype.declared}"
        try:
            canonical = canonicalize(value, ctype)
        except ValueError_ as exc:
            return exc.reason
        if canonical != value:
            return f"{_short(value)} is not canonical (expected {_short(canonical or '')})"
        if ctype.family is Family.TEXT:
            if "\x00" in value:
                return "contains a NUL character"
            try:
                value.encode("utf-8")
            except UnicodeError:
                return "is not valid Unicode text"
            size = len(value.encode("utf-8")) if ctype.length_in_bytes else len(value)
            unit = "bytes" if ctype.length_in_bytes else "characters"
            if ctype.length is not None and size > ctype.length:
                return f"is {size} {unit} long, more than the declared {ctype.length}"
        if self._format is not None:
            return self._format(value)
        return None


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


# ---------------------------------------------------------------- CSV record codec


def quote(value: str | None) -> str:
    """One field: NULL is empty and unquoted, anything else is quoted with ``"`` doubled."""
    if value is None:
        return ""
    return '"' + value.replace('"', '""') + '"' if '"' in value else '"' + value + '"'


def encode_values(values: Sequence[str | None]) -> str:
    """The canonical encoding of a row's values (no op, no terminator): what row digests hash."""
    return ",".join([quote(v) for v in values])


def encode_record(op: str, values: Sequence[str | None]) -> bytes:
    """One payload record: ``op`` field, the values, ``\\n``; UTF-8."""
    if op not in (OP_UPSERT, OP_DELETE):
        raise RecordFormatError(f"unknown operation {op!r}")
    return (op + "," + encode_values(values) + "\n").encode("utf-8")


class Record:
    """A parsed payload record. ``raw`` is the canonical encoding of ``values`` (no op)."""

    __slots__ = ("line", "op", "raw", "values")

    def __init__(self, op: str, values: list[str | None], raw: str, line: int) -> None:
        self.op = op
        self.values = values
        self.raw = raw
        self.line = line

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.op, self.values, self.raw, self.line) == (other.op, other.values, other.raw, other.line)

    def __repr__(self) -> str:
        return f"Record(op={self.op!r}, values={self.values!r}, raw={self.raw!r}, line={self.line})"


def iter_records(stream: IO[bytes] | Iterable[bytes], width: int) -> Iterator[Record]:
    """Stream-parse records of ``width`` value fields (plus the op) from UTF-8 bytes.

    Accepts a binary file object or an iterable of byte chunks. Memory is bounded by the
    read size plus the longest record. Every non-NULL field must be quoted (the canonical
    encoding); a record that is not is rejected, so ``Record.raw`` is always canonical.
    """
    for batch in iter_record_batches(stream, width):
        yield from batch


class RawBatch(NamedTuple):
    """Complete records of a chunk, not yet parsed: what a worker process is sent.

    ``records`` hold the record text without its terminator; ``numbers`` the payload line
    each starts on (None when every record is one line, counting from ``first_line``).
    """

    records: list[str]
    numbers: list[int] | None
    first_line: int


def iter_record_batches(stream: IO[bytes] | Iterable[bytes], width: int) -> Iterator[list[Record]]:
    """Like :func:`iter_records`, a decoded chunk (about 64 KiB) at a time.

    The C ``csv`` reader parses a whole chunk's records in one call; Python only checks
    each record's quoting (NULL vs ``""``) with one regex in the common case.
    """
    for raw in iter_raw_batches(stream):
        yield parse_raw_batch(raw, width)


def iter_raw_batches(stream: IO[bytes] | Iterable[bytes]) -> Iterator[RawBatch]:
    """Frame the payload into complete records (a quoted value may span lines), unparsed.

    Framing is cheap and sequential; :func:`parse_raw_batch` is the costly part and can run
    anywhere, in any order (a store spreads it over worker processes).
    """
    chunks: Iterable[bytes]
    if hasattr(stream, "read"):
        read = stream.read
        chunks = iter(lambda: read(_READ_SIZE), b"")
    else:
        chunks = stream
    pending = ""
    line = 1
    for text in _decode_chunks(chunks):
        text = pending + text
        # in C: one pass over the text, a newline inside a quoted value does not end a record
        records, numbers, rest, lines = _native.split_records(text, line)
        pending = text[rest:]
        if records:
            yield RawBatch(records, numbers, line)
        line += lines
    if pending:
        if pending.count('"') % 2:
            raise RecordFormatError(f"record at line {line}: unterminated quoted field")
        raise RecordFormatError(f"record at line {line}: missing final newline")


_FIELD = r'(?:"[^"]*(?:""[^"]*)*")?'
_ROW_RE = re.compile(_FIELD + r"(?:," + _FIELD + r")*")
"""Every field quoted or empty: the canonical encoding's shape (the C csv reader does the rest)."""


def parse_raw_batch(batch: RawBatch, width: int) -> list[Record]:
    """Parse framed records of ``width`` values; raises RecordFormatError naming the line."""
    import csv

    records, numbers, first_line = batch
    try:
        parsed = list(csv.reader(records, strict=True))
    except csv.Error:
        for index, record in enumerate(records):
            try:
                list(csv.reader([record], strict=True))
            except csv.Error as exc:
                number = numbers[index] if numbers is not None else first_line + index
                raise RecordFormatError(f"record at line {number}: {exc}") from None
        raise  # pragma: no cover
    lines: Sequence[int] = numbers if numbers is not None else range(first_line, first_line + len(records))
    simple = _simple_shapes(parsed, records, width)
    values = [fields[1:] for fields in parsed]
    bodies = [raw[2:] for raw in records]
    if all(simple):
        return list(map(Record, [fields[0] for fields in parsed], values, bodies, lines))  # type: ignore[arg-type]
    return [
        Record(fields[0], value, body, line) if ok else _record(fields, raw, width, line)
        for ok, fields, value, body, raw, line in zip(
            simple, parsed, values, bodies, records, lines, strict=True
        )
    ]


def _simple_shapes(parsed: list[list[str]], records: list[str], width: int) -> list[bool]:
    """Per record, whether it has the common shape, checked by C-level maps: op unquoted,
    every field quoted, no quote inside any value (all quotes are the 2 * width around the
    fields), no NULL. Such a record's csv fields are its values exactly."""
    count, quotes, separators = width + 1, 2 * width, width - 1
    return list(
        map(
            all,
            zip(
                map(count.__eq__, map(len, parsed)),
                map(str.startswith, records, repeat(('U,"', 'D,"'))),
                map(str.endswith, records, repeat('"')),
                map(quotes.__eq__, map(str.count, records, repeat('"'))),
                map(separators.__eq__, map(str.count, records, repeat('","'))),
                map(operator.not_, map(operator.contains, parsed, repeat(""))),
                strict=True,
            ),
        )
    )


def simple_columns(batch: RawBatch, width: int) -> list[tuple[str | None, ...]] | None:
    """The batch's values column by column (the ops first, NULL as None) when no record has a
    quote inside a value or a quoted empty string; None when any record needs the general
    parser. Checked by C-level maps: without ``""`` in a record, each quoted field holds
    exactly two quotes, so the quote count says every non-empty field is quoted (canonical)
    and every empty one is unquoted (NULL)."""
    import csv

    records = batch.records
    try:
        parsed = list(csv.reader(records, strict=True))
    except csv.Error:
        return None
    nonempty_quotes = map(
        operator.mul, repeat(2), map(operator.sub, repeat(width), map(list.count, parsed, repeat("")))
    )
    if not (
        all(map((width + 1).__eq__, map(len, parsed)))
        and all(map(str.startswith, records, repeat(("U,", "D,"))))
        and not any(map(operator.contains, records, repeat('""')))
        and all(map(operator.eq, map(str.count, records, repeat('"')), nonempty_quotes))
    ):
        return None
    return [
        column if "" not in column else tuple(v or None for v in column)
        for column in zip(*parsed, strict=True)
    ]


def _record(fields: list[str], raw: str, width: int, line: int) -> Record:
    if len(fields) != width + 1:
        raise RecordFormatError(f"record at line {line}: {len(fields) - 1} values, expected {width}")
    op = raw[:2]
    if op != "U," and op != "D,":
        raise RecordFormatError(f"record at line {line}: unknown or quoted operation {op!r}")
    body = raw[2:]
    values: list[str | None] = fields[1:]  # type: ignore[assignment]
    if "" not in values:
        # Fast path: every field quoted and no quote inside any value.
        if body[:1] == body[-1:] == '"' and '"' not in body.replace('","', "")[1:-1]:
            return Record(fields[0], values, body, line)
        if _ROW_RE.fullmatch(body) is None:
            raise RecordFormatError(f"record at line {line}: a non-NULL value is not quoted")
        return Record(fields[0], values, body, line)
    if _ROW_RE.fullmatch(body) is None:
        raise RecordFormatError(f"record at line {line}: a non-NULL value is not quoted")
    # No field that could be a quoted empty string: every empty field is NULL. (``,"",`` can
    # also occur inside a value with escaped quotes: then the exact walk below decides.)
    if not (body == '""' or body.startswith('"",') or ',"",' in body or body.endswith(',""')):
        return Record(fields[0], [None if v == "" else v for v in values], body, line)
    return Record(fields[0], _resolve_empties(fields[1:], body, line), body, line)


def _resolve_empties(fields: list[str], body: str, line: int) -> list[str | None]:
    """Walk the raw fields to tell NULL (unquoted empty) from "" (quoted empty)."""
    result: list[str | None] = []
    pos = 0
    for value in fields:
        if body.startswith('"', pos):
            pos += len(value) + value.count('"') + 2
            result.append(value)
        elif value == "":
            result.append(None)
        else:  # pragma: no cover - excluded by _ROW_RE
            raise RecordFormatError(f"record at line {line}: value {_short(value)} is not quoted")
        pos += 1
    if encode_values(result) != body:
        raise RecordFormatError(f"record at line {line}: not in the canonical CSV encoding")
    return result


_READ_SIZE = 1 << 16


def _decode_chunks(chunks: Iterable[bytes]) -> Iterator[str]:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            text = decoder.decode(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise RecordFormatError(f"payload is not valid UTF-8 near byte {total}: {exc.reason}") from None
    if tail:
        yield tail


# ---------------------------------------------------------------- helpers for callers


def key_indexes(columns: Sequence[ColumnSpec]) -> list[int]:
    """Positions of the primary-key columns, in schema order."""
    return [i for i, c in enumerate(columns) if c.primary_key]


def canonical_row(values: Sequence[object], columns: Sequence[ColumnSpec]) -> list[str | None]:
    """Canonicalise a whole source row (the hub's change capture)."""
    if len(values) != len(columns):
        raise CanonicalError(f"row has {len(values)} values for {len(columns)} columns")
    return [canonicalize(v, c) for v, c in zip(values, columns, strict=True)]


def timestamp_now() -> str:
    """Current UTC time in canonical TIMESTAMP WITH TIME ZONE form (for catalog rows)."""
    return format_timestamp(datetime.now(timezone.utc).replace(microsecond=0), 0) + "+00:00"


__all__ = [
    "OP_DELETE",
    "OP_UPSERT",
    "CanonicalError",
    "ColumnSpec",
    "ColumnType",
    "ColumnValidator",
    "Family",
    "InvalidValueError",
    "RawBatch",
    "Record",
    "RecordFormatError",
    "TypeSpecError",
    "canonical_row",
    "canonicalize",
    "canonicalizer",
    "columns_from_schema",
    "compile_format",
    "encode_record",
    "encode_values",
    "format_decimal",
    "format_float",
    "format_timestamp",
    "iter_raw_batches",
    "iter_records",
    "key_indexes",
    "parse_raw_batch",
    "parse_type",
    "quote",
    "simple_columns",
    "to_python",
]
