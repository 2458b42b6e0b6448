"""Exchange paths: whatever string comes in, the result stays inside the exchange root."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from connectors.transports.base import TransportError, is_listed, remote_path, temporary_name
from protocol.layout import is_temp_name

segments = st.sampled_from(["inbox", "outbox", "control", "..", ".", "", "a.pkg", ".hidden", "x\x00y", "名"])


@given(st.one_of(st.text(max_size=40), st.lists(segments, min_size=1, max_size=5).map("/".join)))
@example("inbox/../../etc/passwd")
@example("/etc/passwd")
@example("inbox//x")
def test_valid_paths_never_escape(path: str) -> None:
    try:
        result = remote_path(path)
    except TransportError as exc:
        assert "invalid exchange path" in str(exc)
        return
    assert not result.is_absolute()
    assert all(part not in ("", ".", "..") and "\x00" not in part for part in result.parts)
    assert str(result) == path  # accepted paths are taken literally, never normalised
    resolved = PurePosixPath("/root-of-exchange") / result
    assert str(resolved).startswith("/root-of-exchange/")


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True))
def test_temporary_names_are_hidden_and_beside_the_target(name: str) -> None:
    target = PurePosixPath("outbox") / name
    tmp = temporary_name(target)
    assert tmp.parent == target.parent
    assert not is_listed(tmp.name) and is_temp_name(tmp.name)
    assert temporary_name(target) != tmp  # unique per try


@pytest.mark.parametrize("name", ["a", "inbox/a.pkg", "control/subscriptions.json"])
def test_ordinary_paths_accepted(name: str) -> None:
    assert str(remote_path(name)) == name
