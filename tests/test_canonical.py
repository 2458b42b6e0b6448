"""Declared types, canonical values, validation and the CSV record codec."""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.canonical import (
    ColumnSpec,
    ColumnValidator,
    Family,
    InvalidValueError,
    RecordFormatError,
    TypeSpecError,
    canonicalize,
    columns_from_schema,
    compile_format,
    encode_record,
    iter_raw_batches,
    iter_records,
    parse_type,
    to_python,
)

# ---------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("declared", "family", "attrs"),
    [
        ("VARCHAR2(50)", Family.TEXT, {"length": 50, "length_in_bytes": False}),
        ("varchar2( 50 byte )", Family.TEXT, {"length": 50, "length_in_bytes": True}),
        ("VARCHAR2(20 CHAR)", Family.TEXT, {"length": 20, "length_in_bytes": False}),
        ("NVARCHAR2(10)", Family.TEXT, {"length": 10}),
        ("CHAR(2)", Family.TEXT, {"length": 2, "fixed": True}),
        ("CHAR", Family.TEXT, {"length": 1, "fixed": True}),
        ("NCHAR(4)", Family.TEXT, {"length": 4, "fixed": True}),
        ("CLOB", Family.TEXT, {"length": None}),
        ("NCLOB", Family.TEXT, {"length": None}),
        ("TEXT", Family.TEXT, {"length": None}),
        ("character varying(20)", Family.TEXT, {"length": 20}),
        ("NUMBER", Family.DECIMAL, {"precision": None, "scale": None}),
        ("NUMBER(10)", Family.DECIMAL, {"precision": 10, "scale": 0}),
        ("NUMBER(10,2)", Family.DECIMAL, {"precision": 10, "scale": 2}),
        ("NUMBER(*,2)", Family.DECIMAL, {"precision": 38, "scale": 2}),
        ("numeric(12, 4)", Family.DECIMAL, {"precision": 12, "scale": 4}),
        ("DECIMAL(5,5)", Family.DECIMAL, {"precision": 5, "scale": 5}),
        ("INTEGER", Family.DECIMAL, {"precision": 38, "scale": 0}),
        ("INT", Family.INTEGER, {"int_max": 2**31 - 1}),
        ("INT(11) UNSIGNED", Family.INTEGER, {"int_min": 0, "int_max": 2**32 - 1}),
        ("BIGINT", Family.INTEGER, {"int_max": 2**63 - 1}),
        ("SMALLINT", Family.INTEGER, {"int_min": -(2**15)}),
        ("DOUBLE PRECISION", Family.FLOAT, {}),
        ("BINARY_DOUBLE", Family.FLOAT, {}),
        ("FLOAT(24)", Family.FLOAT, {}),
        ("DATE", Family.TIMESTAMP, {"fraction": 0}),
        ("DATETIME", Family.TIMESTAMP, {"fraction": 0}),
        ("DATETIME(3)", Family.TIMESTAMP, {"fraction": 3}),
        ("TIMESTAMP", Family.TIMESTAMP, {"fraction": 6}),
        ("TIMESTAMP(9)", Family.TIMESTAMP, {"fraction": 6}),
        ("TIMESTAMP(3) WITH TIME ZONE", Family.TIMESTAMPTZ, {"fraction": 3}),
        ("TIMESTAMP WITH LOCAL TIME ZONE", Family.TIMESTAMPTZ, {"fraction": 6}),
        ("timestamptz", Family.TIMESTAMPTZ, {}),
        ("BLOB", Family.BINARY, {"length": None}),
        ("RAW(16)", Family.BINARY, {"length": 16}),
        ("BYTEA", Family.BINARY, {"length": None}),
        ("VARBINARY(8)", Family.BINARY, {"length": 8}),
        ("LONG RAW", Family.BINARY, {}),
        ("BOOLEAN", Family.BOOLEAN, {}),
    ],
)
def test_parse_type(declared: str, family: Family, attrs: dict[str, object]) -> None:
    ctype = parse_type(declared)
    assert ctype.family is family
    for name, value in attrs.items():
        assert getattr(ctype, name) == value, name


def test_oracle_date_is_pure_date_only_with_that_format() -> None:
    assert parse_type("DATE", format="YYYY-MM-DD").family is Family.DATE
    assert parse_type("DATE", format="YYYY-MM-DD HH24:MI:SS").family is Family.TIMESTAMP
    assert parse_type("DATE").family is Family.TIMESTAMP


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ("GEOMETRY", "unknown declared type"),
        ("", "unknown declared type"),
        ("VARCHAR2", "needs a length"),
        ("NUMBER(40)", "precision must be"),
        ("NUMBER(5,-2)", "scale must be"),
        ("NUMBER(3,5)", "scale must be"),
        ("VARCHAR2(10 WORDS)", "length semantics"),
        ("VARCHAR2(x)", "integer argument"),
        ("RAW", "needs a length"),
        ("TIMESTAMP WITH SOMETHING", "unexpected"),
        ("INT SIGNED", "unexpected"),
        ("VARCHAR2(10); DROP TABLE x", "unknown declared type"),
    ],
)
def test_unknown_or_bad_types_are_rejected_clearly(declared: str, message: str) -> None:
    with pytest.raises(TypeSpecError, match=message):
        parse_type(declared)


def test_schema_checks() -> None:
    with pytest.raises(TypeSpecError, match="primary key"):
        columns_from_schema([{"name": "a", "type": "INT"}])
    with pytest.raises(TypeSpecError, match="duplicate"):
        columns_from_schema([{"name": "a", "type": "INT", "primary_key": True}, {"name": "a", "type": "INT"}])
    cols = columns_from_schema([{"name": "a", "type": "INT", "primary_key": True}])
    assert cols[0].not_null  # a key column is NOT NULL even if the dictionary forgot


# ---------------------------------------------------------------- canonical values


def col(declared: str, **kw: object) -> ColumnSpec:
    return ColumnSpec.from_dict({"name": "c", "type": declared, **kw})


@pytest.mark.parametrize(
    ("declared", "value", "expected"),
    [
        ("NUMBER(10,2)", Decimal("1.5"), "1.50"),
        ("NUMBER(10,2)", 12, "12.00"),
        ("NUMBER(10,2)", "-0", "0.00"),
        ("NUMBER(10,2)", -0.0, "0.00"),
        ("NUMBER(10,2)", 0.1, "0.10"),
        ("NUMBER", Decimal("1.500"), "1.5"),
        ("NUMBER", Decimal("1E+3"), "1000"),
        ("NUMBER", Decimal("-0.000"), "0"),
        ("NUMBER(5)", Decimal("12345"), "12345"),
        ("INTEGER", 10**37, str(10**37)),
        ("INT", Decimal("42"), "42"),
        ("BIGINT", -(2**63), str(-(2**63))),
        ("DOUBLE", 0.1, "0.1"),
        ("DOUBLE", -0.0, "0.0"),
        ("DOUBLE", 1e100, "1e+100"),
        ("VARCHAR2(10)", "张三", "张三"),
        ("VARCHAR2(10)", "", ""),
        ("CHAR(5)", "ab   ", "ab"),
        ("CLOB", "a\r\nb", "a\r\nb"),
        ("DATE", datetime(2015, 12, 10, 13, 15, 36), "2015-12-10 13:15:36"),
        ("DATE", date(2015, 12, 10), "2015-12-10 00:00:00"),
        ("TIMESTAMP", datetime(2015, 12, 10, 13, 15, 36, 500000), "2015-12-10 13:15:36.5"),
        ("TIMESTAMP", "2015-12-10T13:15:36.000001", "2015-12-10 13:15:36.000001"),
        ("TIMESTAMP(0)", datetime(2015, 12, 10), "2015-12-10 00:00:00"),
        (
            "TIMESTAMP WITH TIME ZONE",
            datetime(2015, 12, 10, 8, 0, tzinfo=timezone(timedelta(hours=8))),
            "2015-12-10 00:00:00+00:00",
        ),
        ("TIMESTAMP WITH TIME ZONE", datetime(2015, 12, 10, 8, 0), "2015-12-10 08:00:00+00:00"),
        ("BLOB", b"\x00\xff", "\\x00ff"),
        ("BLOB", b"", "\\x"),
        ("RAW(2)", memoryview(b"ab"), "\\x6162"),
        ("BOOLEAN", True, "true"),
        ("BOOLEAN", 0, "false"),
        ("BOOLEAN", "t", "true"),
    ],
)
def test_canonicalize(declared: str, value: object, expected: str) -> None:
    assert canonicalize(value, col(declared)) == expected
    assert canonicalize(None, col(declared)) is None


def test_pure_date() -> None:
    c = col("DATE", format="YYYY-MM-DD")
    assert canonicalize(date(2020, 2, 29), c) == "2020-02-29"
    assert canonicalize(datetime(2020, 2, 29), c) == "2020-02-29"
    with pytest.raises(InvalidValueError, match="time of day"):
        canonicalize(datetime(2020, 2, 29, 1), c)


@pytest.mark.parametrize(
    ("declared", "value", "reason"),
    [
        ("NUMBER(10,2)", Decimal("1.234"), "decimal places"),
        ("NUMBER(4,2)", Decimal("123"), "digits before"),
        ("NUMBER(10,2)", float("nan"), "finite"),
        ("NUMBER(10,2)", "abc", "not a number"),
        ("NUMBER(10,2)", True, "boolean"),
        ("INT", 2**31, "outside"),
        ("INT", Decimal("1.5"), "not an integer"),
        ("DOUBLE", float("inf"), "NaN and infinity"),
        ("VARCHAR2(10)", 12, "expected text"),
        ("TIMESTAMP(3)", datetime(2015, 1, 1, 0, 0, 0, 123456), "fractional"),
        ("TIMESTAMP", datetime(2015, 1, 1, tzinfo=timezone.utc), "time zone"),
        ("RAW(1)", b"ab", "longer than 1"),
        ("BOOLEAN", 2, "not a boolean"),
    ],
)
def test_canonicalize_never_rounds_or_guesses(declared: str, value: object, reason: str) -> None:
    with pytest.raises(InvalidValueError, match=reason) as info:
        canonicalize(value, col(declared))
    assert info.value.column == "c"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("declared", "kw", "good", "bad", "reason"),
    [
        ("VARCHAR2(3)", {}, ["张三丰", ""], ["张三丰x"], "4 characters long"),
        ("VARCHAR2(6 BYTE)", {}, ["张三"], ["张三丰"], "9 bytes long"),
        ("VARCHAR2(3)", {}, ["ok"], ["a\x00"], "NUL"),
        ("CHAR(3)", {}, ["ab"], ["ab "], "not canonical"),
        ("NUMBER(6,2)", {}, ["1234.50", "0.00", "-1.25"], ["1.5"], "canonical form"),
        ("NUMBER(6,2)", {}, ["1234.50"], ["12345.00"], "canonical form"),
        ("NUMBER(6,2)", {}, ["1.00"], ["-0.00"], "canonical form"),
        ("NUMBER(6,2)", {}, ["1.00"], ["1e3"], "canonical form"),
        ("NUMBER", {}, ["1.5", "100", "0"], ["1.50"], "canonical form"),
        ("SMALLINT", {}, ["-32768", "32767"], ["32768"], "outside"),
        ("BIGINT", {}, ["9223372036854775807"], ["9223372036854775808"], "outside"),
        ("INT", {}, ["7"], ["007"], "canonical form"),
        ("DATE", {}, ["2015-12-10 13:15:36"], ["2015-12-10"], "canonical form"),
        ("DATE", {}, ["2016-02-29 00:00:00"], ["2015-02-29 00:00:00"], "day is out of range"),
        ("TIMESTAMP", {}, ["2015-12-10 13:15:36.5"], ["2015-12-10 13:15:36.50"], "canonical form"),
        (
            "TIMESTAMP WITH TIME ZONE",
            {},
            ["2015-12-10 13:15:36+00:00"],
            ["2015-12-10 13:15:36+08:00"],
            "canonical",
        ),
        ("BLOB", {}, ["\\x00ff", "\\x"], ["\\x00FF"], "canonical form"),
        ("RAW(1)", {}, ["\\x00"], ["\\x0000"], "longer than 1"),
        ("BOOLEAN", {}, ["true", "false"], ["t"], "canonical form"),
        ("DOUBLE", {}, ["0.1", "1e+100"], ["0.10"], "not canonical"),
        (
            "VARCHAR2(50)",
            {"format": "YYYY-MM-DD HH:MM:SS"},
            ["2015-12-10 13:15:36"],
            ["2015-12-10 13:15"],
            "does not match the format",
        ),
        (
            "VARCHAR2(50)",
            {"format": "YYYY-MM-DD HH:MM:SS"},
            ["2015-12-10 13:15:36"],
            ["2015-13-10 13:15:36"],
            "not a valid date/time",
        ),
        ("VARCHAR2(20)", {"format": "YYYY年MM月DD日"}, ["2015年12月10日"], ["2015-12-10"], "format"),
        ("VARCHAR2(10)", {"not_null": True}, ["x"], [None], "NOT NULL"),
    ],
)
def test_validator(
    declared: str, kw: dict[str, object], good: list[str], bad: list[str | None], reason: str
) -> None:
    validator = ColumnValidator(col(declared, **kw))
    assert validator.check(good) is None
    assert validator.check([*good, None] if not kw.get("not_null") else good) is None
    failure = validator.check([*good, *bad])
    assert failure is not None
    assert failure[0] == len(good)
    assert reason in failure[1]


def test_descriptive_formats_are_not_enforced() -> None:
    assert compile_format("18位身份证号") is None
    assert compile_format("保留两位小数") is None
    check = compile_format("YYYY-MM-DD HH24:MI:SS")
    assert check is not None
    assert check("2015-12-10 23:59:59") is None
    assert check("2015-12-10 24:00:00") is not None


# ---------------------------------------------------------------- record codec


def test_record_encoding_is_the_contract() -> None:
    assert encode_record("U", ["1", None, "", 'a"b', "张三"]) == 'U,"1",,"","a""b","张三"\n'.encode()
    assert encode_record("D", ["1", None]) == b'D,"1",\n'
    with pytest.raises(RecordFormatError):
        encode_record("X", ["1"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'U,"1"\n', "1 values, expected 2"),
        (b'U,"1","2","3"\n', "3 values, expected 2"),
        (b'X,"1","2"\n', "operation"),
        (b'"U","1","2"\n', "operation"),
        (b'U,1,"2"\n', "not quoted"),
        (b'U,"1",abc\n', "not quoted"),
        (b'U,abc,""\n', "not quoted"),
        (b'U,"1","2"', "final newline"),
        (b'U,"1","2\n', "unterminated"),
        (b'U,"1"x,"2"\n', "expected after"),
        (b'U,"\xff","2"\n', "UTF-8"),
        (b"\n", "0 values" if False else "values, expected 2"),
    ],
)
def test_malformed_records_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(RecordFormatError, match=message):
        list(iter_records(io.BytesIO(payload), 2))


text_values = st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("UD"), st.lists(text_values, min_size=3, max_size=3)), max_size=20))
def test_record_codec_round_trip(rows: list[tuple[str, list[str | None]]]) -> None:
    payload = b"".join(encode_record(op, values) for op, values in rows)
    parsed = list(iter_records(io.BytesIO(payload), 3))
    assert [(r.op, r.values) for r in parsed] == rows
    for record, (_, values) in zip(parsed, rows, strict=True):
        assert encode_record(record.op, values) == (record.op + "," + record.raw + "\n").encode()
    # the same bytes in arbitrary chunks (the package reader's iterator) parse the same
    chunks = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    assert [(r.op, r.values) for r in iter_records(chunks, 3)] == rows


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_parser_never_misreads_garbage(data: bytes) -> None:
    """Arbitrary bytes either parse into records that re-encode to exactly the input, or fail clearly."""
    try:
        records = list(iter_records(io.BytesIO(data), 2))
    except RecordFormatError:
        return
    assert b"".join(encode_record(r.op, r.values) for r in records) == data


# ---------------------------------------------------------------- canonicalisation properties

DECLARED = st.sampled_from(["NUMBER(12,2)", "NUMBER(38)", "NUMBER", "NUMBER(5,5)"])


@settings(max_examples=300, deadline=None)
@given(DECLARED, st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_decimal_canonical_form_is_a_fixed_point(declared: str, number: Decimal) -> None:
    column = col(declared)
    try:
        text = canonicalize(number, column)
    except InvalidValueError:
        return
    assert text is not None
    assert "e" not in text.lower()
    assert Decimal(text) == number  # exact, never rounded
    assert canonicalize(text, column) == text
    assert canonicalize(to_python(text, column.type), column) == text
    assert ColumnValidator(column).check([text]) is None


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
def test_timestamp_canonical_form(moment: datetime) -> None:
    column = col("TIMESTAMP")
    text = canonicalize(moment, column)
    assert text is not None
    assert datetime.fromisoformat(text) == moment
    assert canonicalize(to_python(text, column.type), column) == text
    assert ColumnValidator(column).check([text]) is None


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(timezones=st.timezones(), min_value=datetime(1900, 1, 2), max_value=datetime(9999, 12, 30))
)
def test_timestamptz_normalised_to_utc(moment: datetime) -> None:
    column = col("TIMESTAMP WITH TIME ZONE")
    text = canonicalize(moment, column)
    assert text is not None and text.endswith("+00:00")
    assert datetime.fromisoformat(text) == moment.astimezone(timezone.utc)
    assert ColumnValidator(column).check([text]) is None


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trip(number: float) -> None:
    column = col("BINARY_DOUBLE")
    text = canonicalize(number, column)
    assert text is not None and float(text) == number
    assert ColumnValidator(column).check([text]) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_binary_round_trip(data: bytes) -> None:
    column = col("BLOB")
    text = canonicalize(data, column)
    assert text == "\\x" + data.hex()
    assert to_python(text, column.type) == data
    assert ColumnValidator(column).check([text]) is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30))
def test_text_preserved_exactly(value: str) -> None:
    column = col("NVARCHAR2(30)")
    assert canonicalize(value, column) == value
    assert ColumnValidator(column).check([value]) is None


def test_error_names_the_right_line_across_chunks() -> None:
    good = b"".join(encode_record("U", [str(i), f"多行\n值{i}", None]) for i in range(3000))
    payload = good + b'U,"x",unquoted,\n'
    chunks = [payload[i : i + 999] for i in range(0, len(payload), 999)]
    with pytest.raises(RecordFormatError, match="line 6001"):
        list(iter_records(chunks, 3))
    records = list(iter_records([good], 3))
    assert [r.line for r in records[:3]] == [1, 3, 5]
    assert records[-1].line == 5999


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [
            "NUMBER(12,2)",
            "NUMBER(4,2)",
            "NUMBER(5)",
            "VARCHAR2(5)",
            "TIMESTAMP(3)",
            "TIMESTAMP",
            "DATE",
            "CHAR(3)",
        ]
    ),
    st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False),
        st.decimals(places=2, allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.datetimes(),
        st.dates(),
        st.integers(),
        st.none(),
    ),
)
def test_fast_canonicalizer_agrees_with_canonicalize(declared: str, value: object) -> None:
    from protocol.canonical import canonicalizer

    column = col(declared)
    try:
        expected: object = canonicalize(value, column)
    except InvalidValueError as exc:
        expected = exc.reason
    try:
        got: object = canonicalizer(column)(value)
    except InvalidValueError as exc:
        got = exc.reason
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["U", "D"]),
            st.lists(
                st.one_of(st.none(), st.just(""), st.text(alphabet='ab,"\n张 ', max_size=5)),
                min_size=3,
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_simple_columns_agree_with_the_general_parser(rows: list[tuple[str, list[str | None]]]) -> None:
    """The column-wise fast path either declines or returns exactly what the parser does."""
    from protocol.canonical import RawBatch, parse_raw_batch, simple_columns

    payload = b"".join(encode_record(op, values) for op, values in rows)
    (batch,) = list(iter_raw_batches([payload]))
    expected = parse_raw_batch(batch, 3)
    columns = simple_columns(RawBatch(batch.records, batch.numbers, batch.first_line), 3)
    has_quote_or_empty = any(v is not None and ('"' in v or v == "") for _op, values in rows for v in values)
    if columns is None:
        assert has_quote_or_empty
        return
    assert list(columns[0]) == [r.op for r in expected]
    assert [list(row) for row in zip(*columns[1:], strict=True)] == [r.values for r in expected]
