"""The C fast path (protocol/csrc/native.c, protocol/fastrows.py) against the Python reference.

The rule it must keep: C never accepts what the Python checks refuse, and what it accepts it
hashes exactly as Python does. Values are generated near every boundary the checks have
(lengths, digits, calendar, fractions, quotes, NUL, surrogates, non-ASCII digits); each is
put in a record and given to both paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.stores.tables.errors import PackageRejected
from connectors.stores.tables.rowcheck import RowChecker
from protocol import _native
from protocol.canonical import RawBatch, columns_from_schema, encode_record, iter_raw_batches, parse_raw_batch
from protocol.digest import ITEM_BYTES, LtHash, bucket_of, digest_of, hash_keys, item_lanes, row_item
from protocol.fastrows import FastRows
from tests.tables_helpers import STAFF_SCHEMA, staff_row

DECLARED = [
    ("VARCHAR2(5)", None),
    ("NVARCHAR2(3)", None),
    ("VARCHAR2(4 BYTE)", None),
    ("CHAR(2)", None),
    ("CLOB", None),
    ("VARCHAR2(19)", "YYYY-MM-DD HH:MM:SS"),
    ("VARCHAR2(10)", "YYYY-MM-DD"),
    ("INTEGER", None),
    ("SMALLINT", None),
    ("BIGINT", None),
    ("NUMBER(5,2)", None),
    ("NUMBER(3)", None),
    ("NUMBER(2,2)", None),
    ("NUMBER", None),
    ("NUMBER(38)", None),
    ("DATE", "YYYY-MM-DD"),
    ("DATE", "YYYY-MM-DD HH:MM:SS"),
    ("TIMESTAMP", None),
    ("TIMESTAMP(0)", None),
    ("TIMESTAMP(3)", "YYYY-MM-DD HH24:MI:SS"),
    ("TIMESTAMP(9)", None),
    ("TIMESTAMP WITH TIME ZONE", None),
    ("BLOB", None),
    ("RAW(2)", None),
    ("BOOLEAN", None),
]

# pieces that sit on the checks' boundaries; joined at random
_PIECES = [
    "0", "1", "9", "00", "01", "10", "12", "13", "23", "24", "28", "29", "30", "31", "59", "60", "99",
    "0000", "0001", "1999", "2000", "2024", "2100", "9999",
    "-", ".", ":", " ", ",", '"', "\x00", "\n", "\\x", "ab", "AB", "0f", "g0", "true", "false",
    "张", "三", "é", "١", "２", "\ud800", "+00:00", "+08:00", "5", "50", "500000", "123456789",
    "9223372036854775807", "9223372036854775808", "32767", "32768", "-32768", "-32769",
]  # fmt: skip

values = st.one_of(
    st.none(),
    st.lists(st.sampled_from(_PIECES), max_size=12).map("".join),
    st.text(max_size=8),
    st.dates().map(str),
    st.datetimes().map(lambda d: d.isoformat(sep=" ")),
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


def checker_for(declared: str, fmt: str | None, kind: str = "snapshot") -> tuple[RowChecker, FastRows]:
    column: dict[str, Any] = {"name": "V", "type": declared}
    if fmt:
        column["format"] = fmt
    columns = columns_from_schema([{"name": "ID", "type": "VARCHAR2(20)", "primary_key": True}, column])
    fast = FastRows.for_columns(columns)
    assert fast is not None, declared
    python = RowChecker(columns, kind)
    python.fast = None
    return python, fast


CHECKERS = {d: checker_for(*d) for d in DECLARED}
DELTA_CHECKERS = {d: checker_for(*d, kind="delta") for d in DECLARED}


def python_result(checker: RowChecker, records: list[str]) -> tuple[LtHash, list[bytes]] | None:
    digest = LtHash()
    try:
        keys = checker.check_and_hash([RawBatch(records, None, 1)], digest)
    except PackageRejected:
        return None
    return digest, keys


def python_digest(checker: RowChecker, records: list[str]) -> LtHash | None:
    result = python_result(checker, records)
    return None if result is None else result[0]


def record(key: str, value: str | None) -> str:
    try:
        return encode_record("U", [key, value]).decode("utf-8")[:-1]
    except UnicodeEncodeError:  # a lone surrogate: only a str can carry it
        return 'U,"' + key + '","' + (value or "").replace('"', '""') + '"'


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DECLARED), values)
@example(("DATE", "YYYY-MM-DD"), "2024-02-30")
@example(("INTEGER", None), "-0")
@example(("NUMBER(5,2)", None), "-0.00")
@example(("NUMBER", None), "1.50")
@example(("TIMESTAMP", None), "2024-01-01 23:59:59.1234560")
@example(("TIMESTAMP(0)", None), "2024-01-01 00:00:00.5")
@example(("CHAR(2)", None), "a ")
@example(("NVARCHAR2(3)", None), "张三李")
@example(("VARCHAR2(4 BYTE)", None), "张三")
@example(("VARCHAR2(5)", None), 'a"b')
@example(("RAW(2)", None), "\\x0a0B")
def test_c_never_accepts_what_python_refuses(declared: tuple[str, str | None], value: str | None) -> None:
    python, fast = CHECKERS[declared]
    records = [record("K1", value)]
    expected = python_digest(python, records)
    digest = LtHash()
    accepted = fast.check_and_hash(records, digest)
    if accepted:
        assert expected is not None, f"C accepted {value!r} for {declared}, Python refuses it"
        assert digest == expected
    else:
        assert digest == LtHash(), "a refused batch must leave the digest untouched"


@pytest.mark.parametrize(
    ("declared", "value"),
    [
        (("VARCHAR2(5)", None), 'a"",b'),
        (("NVARCHAR2(3)", None), "张三李"),
        (("VARCHAR2(4 BYTE)", None), "张a"),
        (("CLOB", None), "多行\n文本, 带 \"引号\""),
        (("CLOB", None), ""),
        (("VARCHAR2(19)", "YYYY-MM-DD HH:MM:SS"), "2024-02-29 23:59:59"),
        (("INTEGER", None), "-42"),
        (("BIGINT", None), "-922337203685477580"),
        (("NUMBER(5,2)", None), "-123.45"),
        (("NUMBER(2,2)", None), "0.05"),
        (("NUMBER", None), "-0.000001"),
        (("DATE", "YYYY-MM-DD"), "2000-02-29"),
        (("TIMESTAMP", None), "1999-12-31 23:59:59.5"),
        (("TIMESTAMP WITH TIME ZONE", None), "2024-01-01 08:00:00.25+00:00"),
        (("BLOB", None), "\\x00ff10"),
        (("BOOLEAN", None), "false"),
        (("CLOB", None), None),
    ],
)
def test_c_accepts_valid_values(declared: tuple[str, str | None], value: str | None) -> None:
    """The fast path is not a path that always says no."""
    python, fast = CHECKERS[declared]
    records = [record("K1", value)]
    digest = LtHash()
    assert fast.check_and_hash(records, digest)
    assert digest == python_digest(python, records)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(['"', ",", "\n", "U", "D", "a", '""', "\r", " "]), max_size=14).map("".join))
def test_any_record_shape(text: str) -> None:
    """Broken framing (quotes, separators, ops) is never accepted unless Python reads it the same."""
    python, fast = CHECKERS[("CLOB", None)]
    records = [text]
    digest = LtHash()
    if fast.check_and_hash(records, digest):
        assert digest == python_digest(python, records)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(DECLARED),
    st.lists(st.tuples(st.sampled_from("UDX"), st.sampled_from(["K1", "K2", 'K"3', ""]), values), max_size=5),
)
def test_delta_records_like_python(
    declared: tuple[str, str | None], changes: list[tuple[str, str, Any]]
) -> None:
    """Upserts and deletes (X: a delete carrying a value, which Python refuses)."""
    python, fast = DELTA_CHECKERS[declared]
    records = [
        record(key, value) if op == "U" else "D," + record(key, value if op == "X" else None)[2:]
        for op, key, value in changes
    ]
    expected = python_result(python, records)
    digest = LtHash()
    keys = fast.check_and_hash_delta(records, digest)
    if keys is None:
        assert digest == LtHash()
    else:
        assert expected is not None, f"C accepted {records!r}, Python refuses it"
        assert (digest, keys) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DECLARED), values)
def test_stored_rows_like_python(declared: tuple[str, str | None], value: str | None) -> None:
    """Rows read back as text (no op) hash as the same row in a payload would."""
    python, fast = CHECKERS[declared]
    row = record("K1", value)
    expected = python_digest(python, [row])
    digest = LtHash()
    if fast.hash_stored([row[2:]], digest):
        assert expected is not None and digest == expected
    else:
        assert digest == LtHash()


def test_staff_rows_go_the_fast_way_and_hash_like_python() -> None:
    columns = columns_from_schema(STAFF_SCHEMA)
    fast = FastRows.for_columns(columns)
    assert fast is not None
    rows = [staff_row(i, variant=i % 3) for i in range(2000)]
    payload = b"".join(encode_record("U", r) for r in rows)
    keys = [i for i, c in enumerate(columns) if c.primary_key]
    digest = LtHash()
    for batch in iter_raw_batches([payload]):
        assert fast.check_and_hash(batch.records, digest)
    assert digest == digest_of(row_item(r, keys) for r in rows)


def test_a_float_column_keeps_the_python_path() -> None:
    columns = columns_from_schema(
        [{"name": "ID", "type": "INTEGER", "primary_key": True}, {"name": "F", "type": "BINARY_DOUBLE"}]
    )
    assert FastRows.for_columns(columns) is None


@pytest.fixture(params=[16, 8, 1])
def xof_width(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each way of computing the XOF that this CPU can run (AVX-512, AVX2, one block)."""
    width = _native.set_xof_width(request.param)
    if width != request.param:
        _native.set_xof_width(0)
        pytest.skip(f"this CPU cannot compute {request.param} XOF blocks at once")
    yield width
    _native.set_xof_width(0)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.one_of(st.binary(max_size=300), st.binary(min_size=1000, max_size=5000)), max_size=20),
    st.sampled_from([1, -1]),
)
def test_native_lanes_are_the_documented_construction(xof_width: int, items: list[bytes], sign: int) -> None:
    """protocol/digest.py states the construction in Python (item_lanes, bucket_of); items
    longer than a BLAKE3 chunk (1 KiB) take the tree path to the root node in xof.h."""
    keys = [item[:5] for item in items]
    expected = np.zeros((256, 1024), dtype=np.uint16)
    counts = np.zeros(256, dtype=np.int64)
    for key, item in zip(keys, items, strict=True):
        bucket = bucket_of(key)
        if sign > 0:
            expected[bucket] += item_lanes(item)
        else:
            expected[bucket] -= item_lanes(item)
        counts[bucket] += sign
    digest = LtHash()
    (digest.add if sign > 0 else digest.remove)(keys, items)
    assert np.array_equal(digest.lanes, expected) and np.array_equal(digest.counts, counts)
    assert ITEM_BYTES == 2048


def test_native_calls_refuse_bad_arguments() -> None:
    item_key, bucket_key = hash_keys()
    digest = LtHash()
    with pytest.raises(ValueError, match="differ in length"):
        _native.lthash_update(digest.lanes, digest.counts, [b"a"], [], 1, item_key, bucket_key)
    with pytest.raises(ValueError, match="256 x 1024"):
        _native.lthash_update(np.zeros(10, np.uint16), digest.counts, [b"a"], [b"b"], 1, item_key, bucket_key)
    with pytest.raises(ValueError, match="32 bytes"):
        _native.lthash_update(digest.lanes, digest.counts, [b"a"], [b"b"], 1, b"short", bucket_key)
    with pytest.raises(TypeError, match="str or bytes"):
        _native.lthash_update(digest.lanes, digest.counts, [1], [b"b"], 1, item_key, bucket_key)
    with pytest.raises(ValueError, match="key positions"):
        _native.check_rows([], ((5,), ((1, 0, 0, 0, 0, 0, 0, 0, 0, 0),)), digest.lanes, digest.counts,
                           item_key, bucket_key, 0)  # fmt: skip
    with pytest.raises(ValueError, match="unknown column kind"):
        _native.check_rows([], ((0,), ((99, 0, 0, 0, 0, 0, 0, 0, 0, 0),)), digest.lanes, digest.counts,
                           item_key, bucket_key, 0)  # fmt: skip
    with pytest.raises(TypeError, match="records must be str"):  # bytes could hold invalid UTF-8
        _native.check_rows([b'U,"a"'], ((0,), ((1, 0, 0, 0, 0, 0, 0, 0, 0, 0),)), digest.lanes,
                           digest.counts, item_key, bucket_key, 0)  # fmt: skip
    with pytest.raises(ValueError, match="mode must be"):
        _native.check_rows([], ((0,), ((1, 0, 0, 0, 0, 0, 0, 0, 0, 0),)), digest.lanes, digest.counts,
                           item_key, bucket_key, 3)  # fmt: skip
    assert digest == LtHash()


field_values = st.one_of(st.none(), st.text(alphabet=st.sampled_from('a,"\n\r 张\x00'), max_size=6))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("UD"), st.lists(field_values, min_size=3, max_size=3)), max_size=6))
def test_parse_rows_reads_canonical_records_like_the_python_parser(
    rows: list[tuple[str, list[str | None]]],
) -> None:
    records = [encode_record(op, values).decode("utf-8")[:-1] for op, values in rows]
    parsed = _native.parse_rows(records, 3)
    assert parsed is not None
    python = parse_raw_batch(RawBatch(records, None, 1), 3)
    assert parsed == ("".join(r.op for r in python), [tuple(r.values) for r in python])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(['"', ",", "U", "D", "a", '""', "\n"]), max_size=12).map("".join))
def test_parse_rows_never_reads_what_the_python_parser_refuses(text: str) -> None:
    parsed = _native.parse_rows([text], 2)
    if parsed is not None:
        python = parse_raw_batch(RawBatch([text], None, 1), 2)
        assert parsed == (python[0].op, [tuple(python[0].values)])


def reference_split(text: str, line: int) -> tuple[list[str], list[int], str]:
    """Framing by lines: a record goes on while its quotes are odd (the rule, stated slowly)."""
    records: list[str] = []
    numbers: list[int] = []
    buffer: list[str] = []
    start = line
    pieces = text.split("\n")
    for number, piece in enumerate(pieces[:-1], start=line):
        if not buffer:
            start = number
        buffer.append(piece)
        if "\n".join(buffer).count('"') % 2 == 0:
            records.append("\n".join(buffer))
            numbers.append(start)
            buffer = []
    return records, numbers, "\n".join([*buffer, pieces[-1]])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(['"', "\n", "a", ",", "张"]), max_size=30).map("".join), st.integers(1, 99))
def test_split_records_frames_like_the_line_rule(text: str, line: int) -> None:
    records, numbers, rest, lines = _native.split_records(text, line)
    expected, expected_numbers, expected_rest = reference_split(text, line)
    assert records == expected
    assert (numbers or list(range(line, line + len(records)))) == expected_numbers
    assert text[rest:] == expected_rest
    assert lines == text[:rest].count("\n")
