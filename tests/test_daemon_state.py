"""The agent's local state DB and the state-directory lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.state import ScheduleRecord, State, StateLock, StateLocked


def test_subscription_state_round_trip(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.update_subscription("s1", kind="table", last_sequence=3, mismatch=["b07", "b1f"],
                              digest_match=False)
    state.record_error("s1", "gap: expected 4, found 6")
    row = state.subscription("s1")
    assert row is not None
    assert row["last_sequence"] == 3
    assert row["mismatch"] == ["b07", "b1f"]
    assert row["digest_match"] is False
    assert row["last_error"].startswith("gap")
    assert state.last_sequence("nope") == 0
    with pytest.raises(ValueError, match="unknown subscription state fields"):
        state.update_subscription("s1", last_sequnce=4)
    assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0


def test_schedule_and_quarantine_persist(tmp_path: Path) -> None:
    state = State(tmp_path)
    state.save_schedule("s", ScheduleRecord(1.0, 1.0, 0))
    state.add_quarantine("s", "0001-s-000001.pkg", "pid", 1, "bad signature", tmp_path / "q")
    state.close()
    again = State(tmp_path, readonly=True)
    assert again.schedule("s") == ScheduleRecord(1.0, 1.0, 0)
    assert again.is_quarantined("0001-s-000001.pkg")
    assert again.quarantined("s")[0]["reason"] == "bad signature"


def test_readonly_without_state_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has the agent run yet"):
        State(tmp_path / "none", readonly=True)


def test_lock_keeps_a_second_instance_out(tmp_path: Path) -> None:
    lock = StateLock(tmp_path)
    lock.acquire()
    code = (
        "import sys; from pathlib import Path; from agent.state import StateLock, StateLocked\n"
        "try:\n    StateLock(Path(sys.argv[1])).acquire()\nexcept StateLocked as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode == 3, other.stderr
    assert "in use by another edu-agent" in other.stdout
    assert f"pid {os.getpid()}" in other.stdout
    assert StateLock(tmp_path).holder() == os.getpid()
    lock.release()
    assert StateLock(tmp_path).holder() is None
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 0
    with pytest.raises(StateLocked):
        lock2 = StateLock(tmp_path)
        lock2.acquire()
        StateLock(tmp_path).acquire()


def test_inbox_package_records(tmp_path: Path) -> None:
    state = State(tmp_path)
    assert state.mark_received("s", 1, "a" * 32)
    assert not state.mark_received("s", 1, "a" * 32)  # read again (held): not new
    assert not state.is_acked("a" * 32)
    state.mark_acked("s", 1, "a" * 32, "applied")
    state.mark_acked("s", 2, "b" * 32, "skipped")
    assert state.is_acked("a" * 32) and state.is_acked("b" * 32)
    state.forget_packages("s", {"b" * 32})  # the hub pruned the first one
    assert not state.is_acked("a" * 32) and state.is_acked("b" * 32)
