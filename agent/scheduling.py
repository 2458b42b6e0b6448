"""When each subscription runs, by its catalog update frequency (附件三 更新频率).

Calendar frequencies (每时 hourly, 每天 daily, 每周 weekly, 每月 monthly, 自定义 custom) are
cron expressions evaluated with ``croniter``; 实时 real-time runs every poll interval.
``croniter`` rather than ``schedule``: ``schedule`` has no months and no notion of "the most
recent slot before now", which is exactly what restart-safe scheduling needs. A
subscription is due when its last successful run started before the most recent slot, so:

* a restart neither skips nor repeats a run (last-run times persist in the state DB);
* runs missed while the agent was down collapse into one run at start, not N;
* a failed run is retried with exponential backoff (poll interval x 2^failures, capped),
  without waiting for the next slot, and without blocking any other subscription;
* a subscription already running is never started again (no overlap).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Protocol

from croniter import croniter

from agent.state import ScheduleRecord

# Default slots for the calendar frequencies. Off the hour so a whole district does not
# poll at :00; overridable per subscription with an explicit cron expression.
DEFAULT_CRON = {
    "hourly": "7 * * * *",
    "daily": "17 2 * * *",
    "weekly": "27 2 * * 1",
    "monthly": "37 2 1 * *",
}

FREQUENCY_ALIASES = {
    "实时": "realtime", "realtime": "realtime", "real-time": "realtime",
    "每时": "hourly", "hourly": "hourly",
    "每天": "daily", "每日": "daily", "daily": "daily",
    "每周": "weekly", "weekly": "weekly",
    "每月": "monthly", "monthly": "monthly",
    "自定义": "custom", "custom": "custom",
}

MAX_BACKOFF_SECONDS = 3600.0


class ScheduleError(ValueError):
    """An update frequency or cron expression that cannot be scheduled."""


@dataclass(frozen=True)
class Schedule:
    """How one subscription is scheduled: ``frequency`` normalised, ``cron`` for calendar ones."""

    frequency: str
    cron: str | None = None

    @classmethod
    def parse(cls, frequency: str, cron: str | None = None) -> Schedule:
        name = FREQUENCY_ALIASES.get(frequency.strip().lower() if frequency else "")
        if name is None:
            known = "实时/每时/每天/每周/每月/自定义 (realtime/hourly/daily/weekly/monthly/custom)"
            raise ScheduleError(f"unknown update frequency {frequency!r}; expected one of {known}")
        if name == "realtime":
            return cls("realtime")
        expression = cron or DEFAULT_CRON.get(name)
        if expression is None:
            raise ScheduleError("update frequency 自定义 (custom) needs a cron expression")
        if not croniter.is_valid(expression):
            raise ScheduleError(f"invalid cron expression {expression!r}")
        return cls(name, expression)

    def latest_slot(self, now: float, tz: tzinfo) -> float | None:
        """The most recent scheduled instant <= now (None for real-time)."""
        if self.cron is None:
            return None
        moment = datetime.fromtimestamp(now, tz) + timedelta(microseconds=1)
        return float(croniter(self.cron, moment).get_prev(float))

    def next_slot(self, now: float, tz: tzinfo) -> float | None:
        if self.cron is None:
            return None
        return float(croniter(self.cron, datetime.fromtimestamp(now, tz)).get_next(float))


def _local_tz() -> tzinfo:
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


class ScheduleStore(Protocol):
    def schedule(self, subscription_id: str) -> ScheduleRecord: ...

    def save_schedule(self, subscription_id: str, record: ScheduleRecord) -> None: ...


class Scheduler:
    """Decides which subscriptions are due; persists every start and finish."""

    def __init__(
        self,
        store: ScheduleStore,
        poll_interval: float,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
    ) -> None:
        self._store = store
        self.poll_interval = poll_interval
        self._clock = clock
        self._tz = tz if tz is not None else _local_tz()
        self._schedules: dict[str, Schedule] = {}
        self._running: dict[str, float] = {}

    def set_subscriptions(self, schedules: dict[str, Schedule]) -> None:
        self._schedules = dict(schedules)

    @property
    def subscriptions(self) -> Iterable[str]:
        return self._schedules.keys()

    def _due_at(self, subscription_id: str) -> float:
        """The instant this subscription becomes (or became) due."""
        schedule = self._schedules[subscription_id]
        record = self._store.schedule(subscription_id)
        now = self._clock()
        if record.failures and record.last_attempt is not None:
            backoff = min(self.poll_interval * 2 ** (record.failures - 1), MAX_BACKOFF_SECONDS)
            return record.last_attempt + backoff
        if record.last_success is None:
            return float("-inf")
        if schedule.cron is None:
            return record.last_success + self.poll_interval
        slot = schedule.latest_slot(now, self._tz)
        assert slot is not None
        if record.last_success < slot:
            return slot
        nxt = schedule.next_slot(now, self._tz)
        assert nxt is not None
        return nxt

    def next_run(self, subscription_id: str) -> float:
        """When this subscription runs next (a past instant or -inf: as soon as the loop gets to it)."""
        return self._due_at(subscription_id)

    def due(self) -> list[str]:
        """Subscriptions due now and not running, most overdue first."""
        now = self._clock()
        pending = []
        for sub in self._schedules:
            if sub in self._running:
                continue
            at = self._due_at(sub)
            if at <= now:
                pending.append((at, sub))
        return [sub for _, sub in sorted(pending)]

    def seconds_until_next(self) -> float:
        """How long the loop may sleep before something is due (0 when something is)."""
        now = self._clock()
        times = [self._due_at(s) for s in self._schedules if s not in self._running]
        if not times:
            return self.poll_interval
        return max(0.0, min(min(times) - now, self.poll_interval))

    def begin(self, subscription_id: str) -> bool:
        """Mark a run as started; False if this subscription is already running."""
        if subscription_id in self._running:
            return False
        self._running[subscription_id] = self._clock()
        return True

    def finish(self, subscription_id: str, ok: bool) -> None:
        """Persist the outcome; a success stamps the run's *start* time so nothing is skipped."""
        started = self._running.pop(subscription_id)
        record = self._store.schedule(subscription_id)
        if ok:
            record = ScheduleRecord(last_attempt=started, last_success=started, failures=0)
        else:
            record = ScheduleRecord(last_attempt=started, last_success=record.last_success,
                                    failures=record.failures + 1)
        self._store.save_schedule(subscription_id, record)

    def force(self, subscription_id: str) -> None:
        """Make one subscription due now (e.g. after a resync request or a config reload)."""
        self._store.save_schedule(subscription_id, ScheduleRecord(None, None, 0))
