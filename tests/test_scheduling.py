"""Scheduling by update frequency with an injected clock and the real state DB."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.scheduling import Schedule, ScheduleError, Scheduler
from agent.state import State

SHANGHAI = timezone(timedelta(hours=8))


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += seconds


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[misc]


def make(tmp_path: Path, clock: Clock, schedules: dict[str, Schedule], poll: float = 30) -> Scheduler:
    scheduler = Scheduler(State(tmp_path / "state"), poll_interval=poll, clock=clock, tz=SHANGHAI)
    scheduler.set_subscriptions(schedules)
    return scheduler


def run(scheduler: Scheduler, ok: bool = True) -> list[str]:
    ran = scheduler.due()
    for sub in ran:
        assert scheduler.begin(sub)
        scheduler.finish(sub, ok)
    return ran


def test_frequency_names_in_chinese_and_english() -> None:
    assert Schedule.parse("实时") == Schedule("realtime")
    assert Schedule.parse("每月").frequency == "monthly"
    assert Schedule.parse("weekly").cron is not None
    assert Schedule.parse("自定义", "*/15 8-18 * * 1-5").cron == "*/15 8-18 * * 1-5"
    with pytest.raises(ScheduleError, match="needs a cron"):
        Schedule.parse("自定义")
    with pytest.raises(ScheduleError, match="invalid cron"):
        Schedule.parse("custom", "61 * * * *")
    with pytest.raises(ScheduleError, match="unknown update frequency"):
        Schedule.parse("每年")


def test_realtime_runs_every_poll_interval(tmp_path: Path) -> None:
    clock = Clock(at(2026, 3, 1, 10, 0, 0))
    sched = make(tmp_path, clock, {"rt": Schedule.parse("实时")}, poll=30)
    assert run(sched) == ["rt"]
    clock.advance(29)
    assert run(sched) == []
    assert sched.seconds_until_next() == pytest.approx(1)
    clock.advance(1)
    assert run(sched) == ["rt"]


def test_monthly_runs_once_per_month_and_survives_restart(tmp_path: Path) -> None:
    clock = Clock(at(2026, 1, 15, 12, 0))
    monthly = {"m": Schedule.parse("每月", "0 3 1 * *")}
    sched = make(tmp_path, clock, monthly)
    assert run(sched) == ["m"]  # never ran: due at once
    clock.set(at(2026, 1, 31, 23, 59))
    assert run(sched) == []
    clock.set(at(2026, 2, 1, 2, 59))
    assert run(sched) == []
    clock.set(at(2026, 2, 1, 3, 0))
    assert run(sched) == ["m"]
    # restart: a new scheduler on the same state does not repeat February's run
    clock.set(at(2026, 2, 1, 3, 5))
    restarted = make(tmp_path, clock, monthly)
    assert run(restarted) == []
    clock.set(at(2026, 3, 1, 3, 0, 1))
    assert run(restarted) == ["m"]


def test_missed_runs_while_down_run_once_at_start(tmp_path: Path) -> None:
    clock = Clock(at(2026, 1, 1, 0, 30))
    hourly = {"h": Schedule.parse("每时", "0 * * * *")}
    assert run(make(tmp_path, clock, hourly)) == ["h"]
    clock.set(at(2026, 1, 1, 9, 30))  # nine slots passed while the agent was down
    restarted = make(tmp_path, clock, hourly)
    assert run(restarted) == ["h"]
    assert run(restarted) == []
    clock.set(at(2026, 1, 1, 9, 59))
    assert run(restarted) == []
    assert restarted.seconds_until_next() == 30  # capped at the poll interval


def test_weekly_and_custom_cron(tmp_path: Path) -> None:
    clock = Clock(at(2026, 3, 2, 1, 0))  # a Monday
    sched = make(tmp_path, clock, {
        "w": Schedule.parse("每周", "0 2 * * 1"),
        "c": Schedule.parse("自定义", "30 8-18/2 * * 1-5"),
    })
    assert sorted(run(sched)) == ["c", "w"]
    clock.set(at(2026, 3, 2, 2, 0))
    assert run(sched) == ["w"]
    clock.set(at(2026, 3, 2, 8, 30))
    assert run(sched) == ["c"]
    clock.set(at(2026, 3, 2, 9, 45))
    assert run(sched) == []
    clock.set(at(2026, 3, 2, 10, 30))
    assert run(sched) == ["c"]
    clock.set(at(2026, 3, 7, 10, 30))  # Saturday: the custom slot does not fire, Friday's did
    assert run(sched) == ["c"]  # Friday 18:30 slot missed while "down"
    assert run(sched) == []
    clock.set(at(2026, 3, 9, 2, 0))
    assert sorted(run(sched)) == ["w"]


def test_failure_backs_off_and_does_not_block_others(tmp_path: Path) -> None:
    clock = Clock(at(2026, 1, 1, 12, 0))
    sched = make(tmp_path, clock, {"bad": Schedule.parse("每天"), "good": Schedule.parse("实时")}, poll=10)
    for sub in sched.due():
        sched.begin(sub)
        sched.finish(sub, ok=(sub == "good"))
    clock.advance(10)
    assert sched.due() == ["bad", "good"]  # bad retried after 10 s, good still every 10 s
    sched.begin("bad")
    sched.finish("bad", ok=False)
    sched.begin("good")
    sched.finish("good", ok=True)
    clock.advance(10)
    assert sched.due() == ["good"]  # second failure: 20 s backoff
    clock.advance(10)
    assert "bad" in sched.due()
    sched.begin("bad")
    sched.finish("bad", ok=True)
    clock.advance(3600)
    assert "bad" not in sched.due()  # succeeded today; next run at tomorrow's slot


def test_runs_never_overlap(tmp_path: Path) -> None:
    clock = Clock(at(2026, 1, 1, 12, 0))
    sched = make(tmp_path, clock, {"s": Schedule.parse("实时")}, poll=5)
    assert sched.begin("s")
    assert not sched.begin("s")
    clock.advance(100)
    assert sched.due() == []  # running: not offered again
    sched.finish("s", ok=True)
    assert sched.due() == ["s"]  # it started 100 s ago, so it is due again


def test_force_makes_due(tmp_path: Path) -> None:
    clock = Clock(at(2026, 1, 1, 12, 0))
    sched = make(tmp_path, clock, {"m": Schedule.parse("每月")})
    run(sched)
    assert sched.due() == []
    sched.force("m")
    assert sched.due() == ["m"]


@settings(max_examples=40, deadline=None)
@given(
    cron=st.sampled_from(["0 * * * *", "17 2 * * *", "0 2 * * 1", "0 3 1 * *", "*/20 8-17 * * 1-5"]),
    steps=st.lists(st.integers(min_value=1, max_value=40 * 24 * 3600), min_size=1, max_size=30),
    restarts=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_exactly_one_run_per_passed_slot_window(
    tmp_path_factory: pytest.TempPathFactory, cron: str, steps: list[int], restarts: list[bool]
) -> None:
    """Between two checks the agent runs iff at least one slot passed, restarts or not."""
    directory = tmp_path_factory.mktemp("sched")
    clock = Clock(at(2026, 1, 1, 0, 0))
    schedules = {"s": Schedule.parse("custom", cron)}
    sched = make(directory, clock, schedules)
    assert run(sched) == ["s"]
    for step, restart in zip(steps, restarts, strict=False):
        before = clock.now
        clock.advance(step)
        if restart:
            sched = make(directory, clock, schedules)
        slot = schedules["s"].latest_slot(clock.now, SHANGHAI)
        assert slot is not None
        expected = ["s"] if slot > before else []
        assert run(sched) == expected
        assert run(sched) == []
