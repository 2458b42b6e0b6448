"""Type mapping is lossless per dialect: arbitrary values of every declared type family are
written through the store and read back (independent SELECT) in the same canonical form."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.stores.tables import TableStore
from protocol.canonical import canonicalize, columns_from_schema
from tests.tables_helpers import Source, stream, table_contents

SCHEMA: list[dict[str, Any]] = [
    {"name": "ID", "type": "NUMBER(10)", "primary_key": True},
    {"name": "V_VARCHAR2", "type": "VARCHAR2(20)"},
    {"name": "V_NVARCHAR2", "type": "NVARCHAR2(10)"},
    {"name": "V_CHAR", "type": "CHAR(3)"},
    {"name": "V_CLOB", "type": "CLOB"},
    {"name": "V_NUMBER_P_S", "type": "NUMBER(12,3)"},
    {"name": "V_NUMBER", "type": "NUMBER"},
    {"name": "V_INTEGER", "type": "INTEGER"},
    {"name": "V_BIGINT", "type": "BIGINT"},
    {"name": "V_SMALLINT", "type": "SMALLINT"},
    {"name": "V_DOUBLE", "type": "BINARY_DOUBLE"},
    {"name": "V_DATE", "type": "DATE"},
    {"name": "V_PURE_DATE", "type": "DATE", "format": "YYYY-MM-DD"},
    {"name": "V_TIMESTAMP", "type": "TIMESTAMP(6)"},
    {"name": "V_TIMESTAMPTZ", "type": "TIMESTAMP WITH TIME ZONE"},
    {"name": "V_BLOB", "type": "BLOB"},
    {"name": "V_RAW", "type": "RAW(8)"},
    {"name": "V_BOOLEAN", "type": "BOOLEAN"},
]
COLUMNS = columns_from_schema(SCHEMA)

TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)
# MySQL/MariaDB DATETIME and DATE are documented from year 1000 on (docs/tables.md)
MOMENTS = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30))

VALUES = [
    TEXT,
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=10),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=3),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=200),
    st.decimals(min_value=Decimal("-999999999.999"), max_value=Decimal("999999999.999"), places=3),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(-(10**38) + 1, 10**38 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**15), 2**15 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    MOMENTS.map(lambda d: d.replace(microsecond=0)),
    st.dates(min_value=date(1000, 1, 1)),
    MOMENTS,
    st.datetimes(
        min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    ).filter(lambda d: d.astimezone(timezone.utc).year >= 1000),
    st.binary(max_size=40),
    st.binary(max_size=8),
    st.booleans(),
]


def _canonical_or_none(value: object, index: int) -> str | None:
    try:
        return canonicalize(value, COLUMNS[index + 1])
    except ValueError:
        return None  # not representable in the declared type (e.g. too many digits): NULL instead


ROWS = st.lists(st.tuples(*[st.none() | v for v in VALUES]), max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
@example(
    rows=[
        (
            '𝄞😀 张三\r\n"x",',
            "",
            " a",
            "多行\n文本" * 20,
            Decimal("-0.001"),
            Decimal("-12345678901234567890.123456789"),
            10**38 - 1,
            -(2**63),
            -(2**15),
            5e-324,
            datetime(1000, 1, 1, 0, 0, 1),
            date(9999, 12, 31),
            datetime(2026, 11, 25, 23, 59, 59, 999999),
            datetime(2026, 1, 1, 7, 30, tzinfo=timezone(timedelta(hours=8))),
            b"\x00\xff\\x",
            b"",
            False,
        )
    ]
)
def test_every_type_round_trips_through_the_database(db_url: str, rows: list[tuple[object, ...]]) -> None:
    source = Source(SCHEMA, subscription="types")
    canonical_rows = [
        [str(i)] + [_canonical_or_none(v, j) for j, v in enumerate(row)] for i, row in enumerate(rows)
    ]
    store = TableStore(db_url)
    try:
        position = store.position("types")
        source.sequence = position.sequence if position is not None else 0
        header, payload = source.snapshot(canonical_rows)
        result = store.apply(header, stream(payload), "types_roundtrip")  # type: ignore[arg-type]
        assert result.applied and result.match
        assert table_contents(db_url, "types_roundtrip", SCHEMA) == source.canonical_set()
        assert store.verify("types").match
    finally:
        store.close()
