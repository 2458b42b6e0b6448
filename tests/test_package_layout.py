"""Exchange layout: package names sort by sequence, temp names are ignored, ids are safe."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import LayoutError
from protocol.layout import (
    AgentExchange,
    PackageName,
    is_temp_name,
    new_package_id,
    package_filename,
    parse_package_name,
    sorted_packages,
    temp_name,
    validate_id,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
sequences = st.integers(min_value=0, max_value=10**12 - 1)
package_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)


@given(ids, sequences, package_ids)
def test_name_round_trip(channel: str, sequence: int, package_id: str) -> None:
    name = package_filename(channel, sequence, package_id)
    assert parse_package_name(name) == PackageName(channel, sequence, package_id)
    assert not is_temp_name(name)
    assert is_temp_name(temp_name(name))
    with pytest.raises(LayoutError):
        parse_package_name(temp_name(name))


@given(ids, st.lists(sequences, min_size=2, max_size=20, unique=True))
def test_lexical_order_is_sequence_order(channel: str, seqs: list[int]) -> None:
    names = [package_filename(channel, s, new_package_id()) for s in seqs]
    assert [parse_package_name(n).sequence for n in sorted(names)] == sorted(seqs)


@pytest.mark.parametrize(
    "name",
    [
        "sub.1.0123456789abcdef0123456789abcdef.pkg",  # sequence not 12 digits
        "sub.000000000001.0123456789ABCDEF0123456789abcdef.pkg",  # upper-case id
        "../sub.000000000001.0123456789abcdef0123456789abcdef.pkg",
        "sub.000000000001.0123456789abcdef0123456789abcdef.pkg.tmp",
        ".sub.000000000001.0123456789abcdef0123456789abcdef.pkg",
        "sub.000000000001.0123456789abcdef0123456789abcdef.pkg/",
        "su.b.000000000001.0123456789abcdef0123456789abcdef.pkg",
        "sub.000000000001.0123456789abcdef0123456789abcdef.pkg\n",
        "",
    ],
)
def test_anything_else_is_rejected(name: str) -> None:
    with pytest.raises(LayoutError):
        parse_package_name(name)


@pytest.mark.parametrize("bad", ["", ".hidden", "-rf", "a/b", "a.b", "a b", "x" * 65, "学校", None, 5])
def test_ids_are_validated(bad: object) -> None:
    with pytest.raises(LayoutError):
        validate_id(bad)


def test_sorted_packages_skips_temp_and_reports_foreign_names() -> None:
    a2 = package_filename("a", 2, new_package_id())
    a10 = package_filename("a", 10, new_package_id())
    b1 = package_filename("b", 1, new_package_id())
    listing = [b1, a10, temp_name(a10), "README", a2]
    packages, foreign = sorted_packages(listing)
    assert [p.filename for p in packages] == [a2, a10, b1]
    assert foreign == ["README"]


def test_agent_exchange_directories() -> None:
    ex = AgentExchange.for_agent("/srv/exchange", "school-1")
    assert ex.inbox == PurePosixPath("/srv/exchange/school-1/inbox")
    assert ex.outbox.name == "outbox" and ex.control.name == "control"
    with pytest.raises(LayoutError):
        AgentExchange.for_agent("/srv/exchange", "..")
