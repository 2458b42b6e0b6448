"""The hub's canonicalisation shortcuts produce exactly what protocol.canonical produces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.catalog import Column
from hub.rows import RowCodec
from protocol import canonical

TYPES = [
    "INTEGER",
    "INT",
    "BIGINT",
    "SMALLINT",
    "NUMBER(5)",
    "NUMBER(10,0)",
    "VARCHAR2(20)",
    "CHAR(4)",
    "CLOB",
]


def _codec(declared: str) -> RowCodec:
    return RowCodec(
        [
            Column(name="K", label="k", meaning="k", type="INTEGER", primary_key=True),
            Column(name="V", label="v", meaning="v", type=declared),
        ]
    )


def _reference(declared: str, value: object) -> str | None:
    return canonical.canonicalize(value, canonical.ColumnSpec.from_dict({"name": "V", "type": declared}))


@pytest.mark.parametrize("declared", TYPES)
@given(value=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=30), st.none()))
def test_shortcuts_agree_with_canonicalize(declared: str, value: object) -> None:
    codec = _codec(declared)
    try:
        expected = _reference(declared, value)
    except canonical.CanonicalError:
        with pytest.raises(canonical.CanonicalError):
            codec.values([1, value])
        return
    assert codec.values([1, value]) == ["1", expected]


def test_key_and_delete_record() -> None:
    codec = _codec("VARCHAR2(20)")
    key, line = codec.encode([7, 'a "b",c'])
    assert key == '"7"' and line == '"7","a ""b"",c"'
    assert codec.delete_record(key) == 'D,"7",'
    assert codec.key_of([7]) == key
