"""The audit trail's hash chain: appends, verification, and every kind of tampering."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audit import EMPTY_HEAD, AuditTrail, Head, verify


def _trail(tmp_path: Path, n: int = 5) -> AuditTrail:
    trail = AuditTrail(tmp_path / "audit" / "audit.log")
    for i in range(n):
        trail.record("package.applied", subscription="s1", package_id=f"p{i}", sequence=i + 1, 姓名="张三")
    return trail


def _lines(trail: AuditTrail) -> list[str]:
    return trail.path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_chain_verifies_and_head_is_tracked(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    head = trail.head()
    assert head.seq == 5
    result = verify(trail.path)
    assert result.ok, result.errors
    assert result.entries == 5
    assert result.head == head
    assert Head.parse(trail.head_path.read_text()) == head
    # a fresh instance (a restart) continues the same chain
    again = AuditTrail(trail.path)
    assert again.head() == head
    again.record("config.reloaded", digest="abc")
    assert verify(trail.path).ok
    entries = [json.loads(line) for line in _lines(again)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert entries[0]["prev"] == EMPTY_HEAD.hash
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))


def test_log_file_is_private(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 1)
    assert trail.path.stat().st_mode & 0o077 == 0


def test_unknown_event_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        AuditTrail(tmp_path / "a.log").record("package.teleported")


def test_edited_entry_is_detected(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    lines = _lines(trail)
    lines[2] = lines[2].replace('"p2"', '"p9"')
    trail.path.write_text("".join(lines), encoding="utf-8")
    result = verify(trail.path)
    assert not result.ok
    assert any("entry 3 hash mismatch" in e for e in result.errors)


def test_edited_and_rehashed_entry_breaks_the_next_link(tmp_path: Path) -> None:
    from agent.audit import entry_hash

    trail = _trail(tmp_path)
    lines = _lines(trail)
    entry = json.loads(lines[1])
    entry["package_id"] = "forged"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry, ensure_ascii=False) + "\n"
    trail.path.write_text("".join(lines), encoding="utf-8")
    result = verify(trail.path)
    assert any("audit.log:3: prev hash" in e for e in result.errors)


def test_deleted_entry_is_detected(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    lines = _lines(trail)
    del lines[1]
    trail.path.write_text("".join(lines), encoding="utf-8")
    result = verify(trail.path)
    assert any("seq 3 follows 1" in e for e in result.errors)


def test_truncation_is_detected_by_the_head_file(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    lines = _lines(trail)
    trail.path.write_text("".join(lines[:3]), encoding="utf-8")
    result = verify(trail.path)
    assert any("truncated" in e for e in result.errors)


def test_truncation_with_head_file_rewritten_is_detected_by_known_head(tmp_path: Path) -> None:
    trail = _trail(tmp_path)
    reported = trail.head()  # what heartbeats carried to the platform
    lines = _lines(trail)
    trail.path.write_text("".join(lines[:3]), encoding="utf-8")
    trail.head_path.write_text(str(Head(3, json.loads(lines[2])["hash"])))
    assert verify(trail.path).ok  # locally consistent ...
    result = verify(trail.path, expect_head=reported)
    assert not result.ok  # ... but not what the platform saw
    assert any("truncated" in e for e in result.errors)


def test_rewritten_history_is_detected_by_known_head(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 3)
    reported = trail.head()
    trail.path.unlink()
    trail.head_path.unlink()
    fresh = AuditTrail(trail.path)
    for _ in range(4):
        fresh.record("agent.start")
    result = verify(trail.path, expect_head=reported)
    assert any("rewritten" in e for e in result.errors)


def test_torn_last_line_is_reported(tmp_path: Path) -> None:
    trail = _trail(tmp_path, 2)
    with open(trail.path, "a") as fh:
        fh.write('{"seq": 3, "ev')
    result = verify(trail.path)
    assert not result.ok


def test_head_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        Head.parse("12:nothex")
    assert Head.parse(f"7:{'a' * 64}") == Head(7, "a" * 64)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=5), st.integers(min_value=0, max_value=300), st.integers(1, 255))
def test_any_single_byte_change_is_detected(tmp_path_factory: pytest.TempPathFactory, line: int, pos: int,
                                            xor: int) -> None:
    directory = tmp_path_factory.mktemp("audit")
    trail = AuditTrail(directory / "audit.log")
    for i in range(6):
        trail.record("package.received", package_id=f"pkg-{i}", name=f"inbox/{i:08d}.pkg")
    data = bytearray(trail.path.read_bytes())
    starts = [0, *[i + 1 for i, b in enumerate(data) if b == 10][:-1]]
    offset = starts[line] + pos % (len(data) - starts[line])
    data[offset] ^= xor
    trail.path.write_bytes(bytes(data))
    assert not verify(trail.path).ok
