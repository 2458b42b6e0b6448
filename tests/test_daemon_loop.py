"""The main loop as a real process under a real NOTIFY_SOCKET listener.

The process runs :func:`agent.daemon.serve` (what ``edu-agent run`` runs) with a small
runtime defined here, driven through files in a work directory: ``config.json`` (reload it with
SIGHUP; invalid JSON is an invalid config), ``hang`` (the next sync hangs without progress),
``slow`` (the next sync is a 1.5 s transaction that makes progress), ``down`` (the platform is
unreachable). This isolates the loop's own contract — READY, WATCHDOG, STATUS, STOPPING,
RELOADING, SIGHUP/SIGTERM, the state lock — from the stores (covered by the e2e tests).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.daemon import ConfigLoadError, Daemon, MetricsSettings, RunContext, serve
from agent.reports import QueuedReport
from agent.scheduling import Schedule

# ----------------------------------------------------------------------------- the process side


@dataclass
class FileRuntime:
    workdir: Path
    agent_id: str
    config_digest: str
    state_dir: Path
    audit_path: Path
    poll_interval: float
    heartbeat_interval: float
    report_queue_max: int = 1 << 20
    metrics: MetricsSettings | None = None
    key_ids: dict[str, str] = field(default_factory=lambda: {"agent_signing": "k1"})

    def subscriptions(self, ctx: RunContext) -> dict[str, Schedule]:
        config = json.loads((self.workdir / "config.json").read_text())
        return {sub: Schedule.parse("实时") for sub in config["subscriptions"]}

    def saved_subscriptions(self, ctx: RunContext) -> dict[str, Schedule]:
        return {}

    def sync(self, subscription_id: str, ctx: RunContext) -> bool:
        marker = self.workdir / "hang"
        if marker.exists():
            marker.unlink()
            _append(self.workdir / "events", f"hang {subscription_id}")
            while True:  # a hung database call: no tick(), no progress
                time.sleep(1)
        slow = self.workdir / "slow"
        if slow.exists():
            slow.unlink()
            _append(self.workdir / "events", f"begin {subscription_id}")
            for _ in range(15):
                time.sleep(0.1)
                ctx.tick()
            _append(self.workdir / "events", f"commit {subscription_id}")
        _append(self.workdir / "events", f"sync {subscription_id} digest={self.config_digest}")
        return subscription_id != "broken"

    def heartbeat_subscriptions(self, ctx: RunContext) -> list[dict[str, Any]]:
        return []

    def disk_free(self) -> dict[str, int | None]:
        return {"share": 1}

    def send_report(self, report: QueuedReport) -> None:
        if (self.workdir / "down").exists():
            raise ConnectionError("platform unreachable")
        outbox = self.workdir / "outbox"
        outbox.mkdir(exist_ok=True)
        (outbox / report.path.name).write_text(json.dumps(report.document))

    def housekeeping(self, ctx: RunContext) -> None:
        pass

    def has_pending(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _append(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")


def load_runtime(workdir: Path) -> FileRuntime:
    text = (workdir / "config.json").read_text()
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ConfigLoadError(f"config.json: {exc}") from None
    state = workdir / "state"
    return FileRuntime(workdir, "school-1", config["digest"], state, state / "audit.log",
                       config.get("poll", 0.3), config.get("heartbeat", 60),
                       key_ids={"agent_signing": config.get("key", "k1")})


if __name__ == "__main__":
    work = Path(sys.argv[1])
    once = len(sys.argv) > 2 and sys.argv[2] == "--once"
    sys.exit(serve(Daemon(lambda: load_runtime(work)), once=once))

# ----------------------------------------------------------------------------- the test side


class NotifyListener:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                break
            msg = dict(line.split("=", 1) for line in data.split("\n") if line)
            self.messages.append(msg)
            if key in msg and (value is None or value in msg[key]):
                return msg
        raise AssertionError(f"no {key}={value} within {timeout}s; got {self.messages[-10:]}")

    def collect(self, seconds: float) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                break
            out.append(dict(line.split("=", 1) for line in data.split("\n") if line))
        self.messages.extend(out)
        return out


@dataclass
class Agent:
    proc: subprocess.Popen[str]
    notify: NotifyListener
    workdir: Path

    def events(self) -> list[str]:
        path = self.workdir / "events"
        return path.read_text().splitlines() if path.exists() else []

    def wait_event(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in e for e in self.events()):
                return
            time.sleep(0.05)
        raise AssertionError(f"event {text!r} not seen; events: {self.events()[-10:]}")

    def audit_events(self) -> list[dict[str, Any]]:
        path = self.workdir / "state" / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()]


def _write_config(workdir: Path, digest: str, subscriptions: list[str], **extra: Any) -> None:
    config = {"digest": digest, "subscriptions": subscriptions, **extra}
    (workdir / "config.json").write_text(json.dumps(config))


def _spawn(workdir: Path, notify: NotifyListener, watchdog_usec: int | None = 600_000,
           *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    env.pop("WATCHDOG_PID", None)
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "tests.test_daemon_loop", str(workdir), *args], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    _write_config(tmp_path, "digest-one", ["alpha", "beta"])
    notify = NotifyListener(tmp_path / "notify.sock")
    proc = _spawn(tmp_path, notify)
    running = Agent(proc, notify, tmp_path)
    yield running
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    notify.sock.close()


def test_ready_watchdog_status_and_stopping(agent: Agent) -> None:
    ready = agent.notify.wait_for("READY", "1")
    assert "2 subscriptions" in ready["STATUS"]
    assert ready["MAINPID"] == str(agent.proc.pid)
    agent.wait_event("sync alpha")
    agent.wait_event("sync beta")
    pings = [m for m in agent.notify.collect(1.5) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 3  # every 0.3 s (half of 0.6 s)
    assert any("STATUS" in m for m in agent.notify.messages)
    agent.proc.send_signal(signal.SIGTERM)
    agent.notify.wait_for("STOPPING", "1")
    assert agent.proc.wait(10) == 0
    events = [e["event"] for e in agent.audit_events()]
    assert events[0] == "agent.start" and events[-1] == "agent.stop"


def test_hung_loop_stops_watchdog_pings(agent: Agent) -> None:
    agent.notify.wait_for("READY", "1")
    agent.notify.wait_for("WATCHDOG", "1")
    (agent.workdir / "hang").touch()
    agent.wait_event("hang")
    agent.notify.collect(0.4)  # a ping may have left just before the hang
    later = agent.notify.collect(2.0)
    assert not [m for m in later if m.get("WATCHDOG")], later
    assert agent.proc.poll() is None  # systemd would now kill it (WatchdogSec); nothing else does


def test_sigterm_finishes_the_current_transaction(agent: Agent) -> None:
    agent.notify.wait_for("READY", "1")
    (agent.workdir / "slow").touch()
    agent.wait_event("begin")
    agent.proc.send_signal(signal.SIGTERM)
    agent.notify.wait_for("STOPPING", "1")
    assert agent.proc.wait(10) == 0
    events = agent.events()
    begin = next(i for i, e in enumerate(events) if e.startswith("begin"))
    assert events[begin + 1].startswith("commit")
    # pings went on during the slow but progressing transaction
    assert any(m.get("WATCHDOG") for m in agent.notify.messages)


def test_sighup_reload_valid_and_invalid(agent: Agent) -> None:
    agent.notify.wait_for("READY", "1")
    agent.wait_event("digest=digest-one")
    _write_config(agent.workdir, "digest-two", ["alpha", "gamma"])
    agent.proc.send_signal(signal.SIGHUP)
    agent.notify.wait_for("RELOADING", "1")
    assert "reloaded" in agent.notify.wait_for("READY", "1")["STATUS"]
    agent.wait_event("sync gamma digest=digest-two")

    (agent.workdir / "config.json").write_text("{not json")
    agent.proc.send_signal(signal.SIGHUP)
    agent.notify.wait_for("RELOADING", "1")
    assert "reload rejected" in agent.notify.wait_for("READY", "1")["STATUS"]
    _write_config(agent.workdir, "digest-three", ["alpha"])  # not reloaded: no SIGHUP
    count = len(agent.events())
    time.sleep(1.0)
    assert all("digest=digest-two" in e for e in agent.events()[count:] if e.startswith("sync"))
    assert agent.proc.poll() is None
    audit = agent.audit_events()
    reloaded = [e for e in audit if e["event"] == "config.reloaded"]
    rejected = [e for e in audit if e["event"] == "config.reload_rejected"]
    assert reloaded[0]["config_digest"] == "digest-two" and reloaded[0]["previous"] == "digest-one"
    assert "config.json" in rejected[0]["error"] and rejected[0]["kept"] == "digest-two"


def test_key_change_is_audited(agent: Agent) -> None:
    agent.notify.wait_for("READY", "1")
    _write_config(agent.workdir, "digest-one", ["alpha"], key="k2")
    agent.proc.send_signal(signal.SIGHUP)
    assert "reloaded" in agent.notify.wait_for("READY", "1")["STATUS"]
    events = agent.audit_events()
    loaded = [e for e in events if e["event"] == "keys.loaded"]
    changed = [e for e in events if e["event"] == "keys.changed"]
    assert loaded[0]["keys"] == {"agent_signing": "k1"}
    assert changed[0]["keys"] == {"agent_signing": "k2"} and changed[0]["previous"] == {"agent_signing": "k1"}


def test_second_instance_is_refused(agent: Agent, tmp_path: Path) -> None:
    agent.notify.wait_for("READY", "1")
    second_notify = NotifyListener(tmp_path / "notify2.sock")
    second = _spawn(agent.workdir, second_notify)
    out, _ = second.communicate(timeout=20)
    assert second.returncode == 1
    assert "in use by another edu-agent" in out
    second_notify.sock.close()


def test_once_exit_code_and_queued_reports_after_outage(tmp_path: Path) -> None:
    _write_config(tmp_path, "d", ["alpha"])
    (tmp_path / "down").touch()
    notify = NotifyListener(tmp_path / "notify.sock")
    first = _spawn(tmp_path, notify, None, "--once")
    assert first.wait(30) == 0, first.stdout.read() if first.stdout else ""
    queued = sorted((tmp_path / "state" / "outqueue").iterdir())
    assert [p.name.split("-", 1)[1] for p in queued] == ["heartbeat.json"]
    (tmp_path / "down").unlink()
    _write_config(tmp_path, "d", ["alpha", "broken"])
    second = _spawn(tmp_path, notify, None, "--once")
    assert second.wait(30) == 1  # "broken" failed
    delivered = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert delivered[0] == queued[0].name  # the heartbeat queued during the outage went out first
    assert not list((tmp_path / "state" / "outqueue").iterdir())
    types = [json.loads((tmp_path / "outbox" / n).read_text())["type"] for n in delivered]
    assert types == ["heartbeat", "heartbeat"]
    notify.sock.close()


def test_invalid_config_at_start_exits_78(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("nope")
    notify = NotifyListener(tmp_path / "notify.sock")
    proc = _spawn(tmp_path, notify, None)
    assert proc.wait(30) == 78
    notify.sock.close()
