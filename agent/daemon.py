"""The agent's main loop: schedule, sync, report, talk to systemd, react to signals.

One thread does everything, in this order, forever::

    ping watchdog -> reload on SIGHUP -> run due subscriptions (each in its own try) ->
    heartbeat when due -> deliver queued reports -> sleep until the next thing is due

Running subscriptions one after another in the main thread is deliberate: runs of one
subscription can never overlap, a failing one is caught and retried with backoff while the
next one runs, and the watchdog is fed only while the loop makes progress (the package
stream calls :meth:`RunContext.tick` per chunk), so a hung database or transfer stops the
pings and systemd restarts the agent. SIGTERM sets a flag that is checked between
packages: the current package's transaction finishes, then the agent says STOPPING=1 and
exits. SIGHUP reloads the configuration; an invalid one is logged, audited and ignored.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import structlog

from agent.audit import AuditTrail
from agent.metrics import AgentMetrics, MetricsServer
from agent.notify import Notifier
from agent.reports import QueuedReport, ReportBuilder, ReportQueue, error_code
from agent.scheduling import Schedule, Scheduler
from agent.state import State, StateLock

log = structlog.get_logger(__name__)

SLEEP_SLICE = 0.5  # seconds: how quickly a sleeping loop notices a signal


class ConfigLoadError(Exception):
    """The configuration (or the keys it names) could not be loaded; the message says why."""


@dataclass
class RunContext:
    """What a subscription run may use: shared services plus the loop's liveness hooks."""

    state: State
    audit: AuditTrail
    queue: ReportQueue
    reports: ReportBuilder
    metrics: AgentMetrics
    tick: Callable[[], None]
    stop_requested: Callable[[], bool]


@dataclass
class MetricsSettings:
    host: str
    port: int
    token: str
    allow: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])


class Runtime(Protocol):
    """Everything loaded from one version of the configuration (replaced whole on reload)."""

    agent_id: str
    config_digest: str
    state_dir: Path
    audit_path: Path
    poll_interval: float
    heartbeat_interval: float
    report_queue_max: int
    metrics: MetricsSettings | None
    key_ids: dict[str, str]  # the agent's own and the pinned platform key ids (audited on change)

    def subscriptions(self, ctx: RunContext) -> dict[str, Schedule]:
        """The verified subscription list from ``control/`` (subscription id -> schedule)."""

    def saved_subscriptions(self, ctx: RunContext) -> dict[str, Schedule]:
        """The last list that verified, from local state (used while the current one cannot be)."""

    def sync(self, subscription_id: str, ctx: RunContext) -> bool:
        """Fetch and apply everything pending for one subscription; True if all went well."""

    def heartbeat_subscriptions(self, ctx: RunContext) -> list[dict[str, Any]]:
        """Per-subscription heartbeat entries (docs/hub.md + docs/daemon.md fields)."""

    def disk_free(self) -> dict[str, int | None]:
        """Free bytes of each target (database file system or share directory)."""

    def send_report(self, report: QueuedReport) -> None:
        """Seal one queued document as a signed package and put it into ``outbox/``."""

    def housekeeping(self, ctx: RunContext) -> None:
        """Daemon mode, between runs: e.g. watch file subscriptions and handle local drift."""

    def has_pending(self) -> bool:
        """True when a background watcher queued work for the loop (wakes it from its sleep)."""

    def close(self) -> None: ...


Loader = Callable[[], Runtime]


class Daemon:
    """Owns the state directory (locked), the audit trail, the report queue and the loop."""

    def __init__(self, loader: Loader, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._loader = loader
        self.notifier = notifier or Notifier()
        self._clock = clock
        self._stop = False
        self._reload = False
        self._runtime: Runtime | None = None
        self._lock: StateLock | None = None
        self._metrics_server: MetricsServer | None = None
        self.metrics = AgentMetrics()
        self.started = clock()
        self._next_heartbeat = 0.0
        self._next_refresh = 0.0
        self._subscriptions_ok = True

    # -- signals ----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "daemon not started"
        return self._runtime

    # -- start / stop -----------------------------------------------------------------------
    def start(self) -> None:
        """Load config and keys, lock the state dir, open state, audit, queue; then READY=1."""
        runtime = self._loader()
        self._runtime = runtime
        self._lock = StateLock(_mkdir(runtime.state_dir))
        self._lock.acquire()
        self.state = State(runtime.state_dir)
        self.audit = AuditTrail(runtime.audit_path)
        self.queue = ReportQueue(runtime.state_dir / "outqueue", max_bytes=runtime.report_queue_max)
        self.reports = ReportBuilder(runtime.agent_id, started=self.started, clock=self._clock)
        self.scheduler = Scheduler(self.state, runtime.poll_interval, clock=self._clock)
        self.audit.record("agent.start", agent_id=runtime.agent_id, config_digest=runtime.config_digest)
        self._note_config(runtime, "config.loaded")
        self._start_metrics(runtime)
        self._refresh_subscriptions()
        self.notifier.ready(f"{len(list(self.scheduler.subscriptions))} subscriptions, "
                            f"config {runtime.config_digest[:12]}")
        log.info("agent.ready", agent_id=runtime.agent_id, state_dir=str(runtime.state_dir))

    def _note_config(self, runtime: Runtime, event: str) -> None:
        previous = self.state.meta("config_digest")
        self.state.set_meta("config_digest", runtime.config_digest)
        if previous != runtime.config_digest or event != "config.loaded":
            self.audit.record(event, config_digest=runtime.config_digest, previous=previous)
        keys = json.dumps(runtime.key_ids, sort_keys=True)
        known = self.state.meta("key_ids")
        if known != keys:
            self.state.set_meta("key_ids", keys)
            self.audit.record("keys.loaded" if known is None else "keys.changed", keys=runtime.key_ids,
                              previous=json.loads(known) if known else None)

    def _start_metrics(self, runtime: Runtime) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        settings = runtime.metrics
        if settings is not None:
            self._metrics_server = MetricsServer(self.metrics, settings.host, settings.port, settings.token,
                                                 settings.allow)
            self._metrics_server.start()

    def close(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        if self._runtime is not None:
            self._runtime.close()
        if hasattr(self, "state"):
            self.state.close()
        if self._lock is not None:
            self._lock.release()

    def context(self) -> RunContext:
        return RunContext(state=self.state, audit=self.audit, queue=self.queue, reports=self.reports,
                          metrics=self.metrics, tick=self.tick, stop_requested=lambda: self._stop)

    def tick(self) -> None:
        """Called from the loop and from inside long runs: proof of progress for the watchdog."""
        self.notifier.watchdog_due()

    # -- the loop ---------------------------------------------------------------------------
    def run_forever(self) -> int:
        try:
            while not self._stop:
                self.tick()
                if self._reload:
                    self._reload = False
                    self.reload()
                self.run_due()
                if self._stop:
                    break
                self._housekeeping()
                self.maybe_heartbeat()
                self.deliver_reports()
                self._sleep(self._sleep_budget())
        finally:
            reason = "signal" if self._stop else "error"  # an exception escaping the loop is a crash
            self.notifier.stopping(f"stopping ({reason})")
            self.audit.record("agent.stop", reason=reason)
            log.info("agent.stopping", reason=reason)
        return 0

    def run_once(self) -> bool:
        """Everything pending now, regardless of schedule; True if every subscription succeeded."""
        ok = True
        for sub in list(self.scheduler.subscriptions):
            if self._stop:
                return False
            ok = self._run_subscription(sub) and ok
        if not self._subscriptions_ok:
            ok = False
        self.send_heartbeat()
        self.deliver_reports()
        return ok and not self._stop

    def run_due(self) -> None:
        if self._refresh_due():
            self._refresh_subscriptions()
        for sub in self.scheduler.due():
            if self._stop:
                return
            self._run_subscription(sub)

    def _refresh_due(self) -> bool:
        return self._clock() >= self._next_refresh

    def _refresh_subscriptions(self) -> None:
        """Re-read the signed subscription list; a bad one keeps the last good list."""
        self._next_refresh = self._clock() + self.runtime.poll_interval
        try:
            schedules = self.runtime.subscriptions(self.context())
        except Exception as exc:
            self._subscriptions_ok = False
            message = f"subscription list unavailable, keeping the last good one: {type(exc).__name__}: {exc}"
            log.error("subscriptions.unavailable", error=message)
            self.notifier.status(message)
            if self.state.meta("subscriptions_error") != message:  # report each distinct problem once
                self.state.set_meta("subscriptions_error", message)
                self.queue.put(self.reports.error(subscription_id=None, code=error_code(exc),
                                                  message=message))
            if not list(self.scheduler.subscriptions):  # just started: the last good list from state
                self.scheduler.set_subscriptions(self.runtime.saved_subscriptions(self.context()))
            return
        self.state.set_meta("subscriptions_error", "")
        self._subscriptions_ok = True
        self.scheduler.set_subscriptions(schedules)

    def _run_subscription(self, sub: str) -> bool:
        self.tick()
        if not self.scheduler.begin(sub):
            return False
        self.notifier.status(f"syncing {sub}")
        ok = False
        try:
            ok = self.runtime.sync(sub, self.context())
        except Exception as exc:  # one subscription never takes the others down
            log.exception("subscription.failed", subscription=sub)
            self.state.record_error(sub, f"{type(exc).__name__}: {exc}")
            self.queue.put(self.reports.error(subscription_id=sub, code=error_code(exc),
                                              message=f"{type(exc).__name__}: {exc}"))
        finally:
            self.scheduler.finish(sub, ok)
        if ok:
            self.metrics.last_success.labels(sub).set(self._clock())
        else:
            self.metrics.errors.labels(sub).inc()
        self.notifier.status(f"idle; last: {sub} {'ok' if ok else 'failed'}")
        return ok

    def _sleep_budget(self) -> float:
        budget = self.scheduler.seconds_until_next()
        budget = min(budget, max(0.0, self._next_heartbeat - self._clock()))
        period = self.notifier.ping_period
        if period is not None:
            budget = min(budget, period)
        return budget

    def _housekeeping(self) -> None:
        try:
            self.runtime.housekeeping(self.context())
        except Exception:  # drift handling must never stop the sync loop
            log.exception("housekeeping.failed")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop and not self._reload and not self.runtime.has_pending():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(SLEEP_SLICE, remaining))

    # -- reload -----------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: load the new config; on any error keep running on the old one."""
        self.notifier.reloading()
        old = self.runtime
        try:
            new = self._loader()
            if new.state_dir.resolve() != old.state_dir.resolve():
                raise ConfigLoadError(f"state directory cannot change on reload ({old.state_dir} -> "
                                      f"{new.state_dir}); restart the agent instead")
        except Exception as exc:
            log.error("config.reload_rejected", error=str(exc), keeping=old.config_digest)
            self.audit.record("config.reload_rejected", error=str(exc), kept=old.config_digest)
            self.notifier.ready(f"reload rejected, old config kept: {exc}")
            return False
        old.close()
        self._runtime = new
        self.scheduler.poll_interval = new.poll_interval
        self._note_config(new, "config.reloaded")
        try:
            self._start_metrics(new)
        except OSError as exc:  # e.g. the new listen address is taken: keep syncing without metrics
            log.error("metrics.unavailable", error=str(exc))
            self._metrics_server = None
        self._refresh_subscriptions()
        self._next_heartbeat = 0.0
        log.info("config.reloaded", config_digest=new.config_digest)
        self.notifier.ready(f"reloaded, config {new.config_digest[:12]}")
        return True

    # -- reporting --------------------------------------------------------------------------
    def maybe_heartbeat(self) -> None:
        if self._clock() >= self._next_heartbeat:
            self.send_heartbeat()

    def send_heartbeat(self) -> None:
        ctx = self.context()
        try:
            subs = self.runtime.heartbeat_subscriptions(ctx)
            disk = self.runtime.disk_free()
        except Exception as exc:
            log.exception("heartbeat.failed")
            subs, disk = [], {}
            self.notifier.status(f"heartbeat incomplete: {exc}")
        doc = self.reports.heartbeat(
            interval_s=self.runtime.heartbeat_interval, config_digest=self.runtime.config_digest,
            subscriptions=subs, disk_free=disk, audit_head=self.audit.head().as_dict(),
            queue_length=len(self.queue))
        self.queue.put(doc)
        self.metrics.heartbeat.set(self._clock())
        self._next_heartbeat = self._clock() + self.runtime.heartbeat_interval

    def deliver_reports(self) -> int:
        """Send the queue oldest-first; an unreachable platform leaves it for later."""
        before = self.queue.dropped
        try:
            sent = self.queue.deliver(self._send)
        except Exception as exc:
            log.warning("reports.delivery_deferred", error=str(exc), queued=len(self.queue))
            sent = 0
        if self.queue.dropped > before:
            self.metrics.reports_dropped.inc(self.queue.dropped - before)
        self.metrics.report_queue.set(len(self.queue))
        return sent

    def _send(self, report: QueuedReport) -> None:
        self.tick()
        self.runtime.send_report(report)
        self.metrics.reports_sent.labels(report.type).inc()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def serve(daemon: Daemon, once: bool = False) -> int:
    """``edu-agent run``: start (exit 78 on a config error), loop or run once, always clean up."""
    from agent import exitcodes
    from agent.state import StateLocked

    daemon.install_signal_handlers()
    try:
        daemon.start()
    except ConfigLoadError as exc:
        log.error("config.invalid", error=str(exc))
        daemon.close()
        return exitcodes.CONFIG
    except StateLocked as exc:
        log.error("agent.already_running", error=str(exc))
        daemon.close()
        return exitcodes.FAILURE
    try:
        if once:
            ok = daemon.run_once()
            daemon.audit.record("agent.stop", reason="--once", ok=ok)
            return exitcodes.OK if ok else exitcodes.FAILURE
        return daemon.run_forever()
    finally:
        daemon.close()
