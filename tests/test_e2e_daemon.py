"""The real `edu-agent run -c FILE` daemon (no --once) against the hub, under a real NOTIFY_SOCKET.

Startup READY, packages published while it runs are applied on the next poll, the metrics
listener answers only with the token, SIGHUP with a broken config keeps the old one (audited),
SIGHUP with a good one is applied, SIGTERM stops it with STOPPING=1 and exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_daemon_loop import NotifyListener
from tests.test_e2e_local import Site, _tree, _write

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-for-the-test"


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback http
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Site, subprocess.Popen[str], NotifyListener, int]]:
    site = Site(tmp_path)
    token_file = site.root / "metrics.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    site.write_config(**{"reporting:": f"metrics:\n  enabled: true\n  listen: 127.0.0.1:{port}\n"
                                       f"  token_file: {token_file}\nreporting:"})
    source = site.root / "files"
    _write(source / "a.txt", "a\n")
    site.add_file_subscription("files", source)
    site.publish()
    notify = NotifyListener(site.root / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(site.config)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield site, proc, notify, port
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    notify.sock.close()


def test_daemon_applies_reloads_serves_metrics_and_stops(
    running: tuple[Site, subprocess.Popen[str], NotifyListener, int],
) -> None:
    site, proc, notify, port = running
    ready = notify.wait_for("READY", "1", timeout=30)
    assert "1 subscriptions" in ready["STATUS"]
    _wait(lambda: (site.share / "files" / "a.txt").exists(), "the first apply")
    notify.wait_for("WATCHDOG", "1")

    _write(site.root / "files" / "b.txt", "b\n")  # published while the daemon runs
    site.publish()
    _wait(lambda: (site.share / "files" / "b.txt").exists(), "the next poll to apply the delta")
    assert _tree(site.share / "files") == {"a.txt": "a\n", "b.txt": "b\n"}

    assert _get(port, None)[0] == 401
    assert _get(port, "wrong")[0] == 401
    applied = 'edu_agent_packages_total{result="applied",subscription="files"} 2.0'
    _wait(lambda: applied in _get(port, TOKEN)[1], "the applied counter (scraped with the token)")
    assert "edu_agent_apply_duration_seconds_bucket" in _get(port, TOKEN)[1]

    good_config = site.config.read_text()
    site.config.write_text(good_config.replace("poll_interval: 1s", "poll_intervall: 1s"))
    proc.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1")
    assert "reload rejected" in notify.wait_for("READY", "1")["STATUS"]
    _write(site.root / "files" / "c.txt", "c\n")
    site.publish()
    _wait(lambda: (site.share / "files" / "c.txt").exists(), "the old config to keep working")

    site.config.write_text(good_config.replace("heartbeat_interval: 1m", "heartbeat_interval: 2m"))
    proc.send_signal(signal.SIGHUP)
    assert "reloaded" in notify.wait_for("READY", "1")["STATUS"]

    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    assert proc.wait(30) == 0
    events = [json.loads(line)["event"] for line in (site.state / "audit.log").read_text().splitlines()]
    assert "config.reload_rejected" in events and "config.reloaded" in events
    assert events[-1] == "agent.stop"
    rejected = next(json.loads(line) for line in (site.state / "audit.log").read_text().splitlines()
                    if json.loads(line)["event"] == "config.reload_rejected")
    assert "poll_intervall" in rejected["error"]
    row = site.reports()[(site.agent, "files")]
    assert row.state == "ok" and row.applied_sequence == 3


def _run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "run", "-c", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_config_and_key_errors_exit_78_naming_the_problem(tmp_path: Path) -> None:
    site = Site(tmp_path)
    good = site.config.read_text()
    site.config.write_text(good.replace("poll_interval: 1s", "poll_interval: soon"))
    done = _run(site.config, "--once")
    assert done.returncode == 78
    assert "platform.poll_interval" in done.stderr
    # keys that belong to another agent
    site.config.write_text(good.replace("id: school-1", "id: school-2"))
    done = _run(site.config, "--once")
    assert done.returncode == 78
    assert "belong to 'school-1', not to agent.id 'school-2'" in done.stderr
    assert not (site.state / "state.db").exists()  # nothing was started


def test_no_subscription_list_yet_once_fails_clearly(tmp_path: Path) -> None:
    site = Site(tmp_path)  # registered, but the platform has published no subscription list
    done = _run(site.config, "--once")
    assert done.returncode == 1
    assert "control/ holds no subscription list yet" in done.stderr
    assert not list((site.state / "outqueue").iterdir())  # the heartbeat went out: the agent is alive
    assert any(d["type"] == "heartbeat" for d in site.outbox_documents())


def test_local_drift_is_reported_and_repaired_through_the_platform(
    running: tuple[Site, subprocess.Popen[str], NotifyListener, int],
) -> None:
    """A file changed and one planted in the share behind the agent's back: the drift watcher sees
    it, the planted file is removed, the changed one is requested again and restored."""
    site, proc, notify, _port = running
    notify.wait_for("READY", "1", timeout=30)
    target = site.share / "files"
    _wait(lambda: (target / "a.txt").exists(), "the first apply")
    time.sleep(1.0)  # the watcher starts after the first apply
    (target / "a.txt").write_text("tampered\n")
    (target / "planted.txt").write_text("not from the platform\n")

    def requested() -> bool:
        return any(d["type"] == "request" for d in site.outbox_documents())

    _wait(requested, "the drift report and resend request", timeout=60)
    docs = site.outbox_documents()
    drift = next(d for d in docs if d["type"] == "error" and d["code"] == "local_drift")
    assert "changed a.txt" in drift["message"] and "added planted.txt" in drift["message"]
    request = next(d for d in docs if d["type"] == "request")
    assert request["request"] == "resend_files" and request["files"] == ["a.txt"]
    assert not (target / "planted.txt").exists()
    time.sleep(3)  # the watcher sees the repair's own changes and re-checks: nothing new to report
    docs = site.outbox_documents()
    assert len([d for d in docs if d["type"] == "request"]) == 1
    assert len([d for d in docs if d["type"] == "error" and d["code"] == "local_drift"]) == 1
    site.publish()  # the platform honours the request
    _wait(lambda: (target / "a.txt").read_text() == "a\n", "the resent file to be applied")
    events = [json.loads(line) for line in (site.state / "audit.log").read_text().splitlines()]
    detected = next(e for e in events if e["event"] == "drift.detected")
    assert detected["resend"] == ["a.txt"] and detected["removed"] == ["planted.txt"]
    status = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(site.config), "--json"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    (sub,) = json.loads(status.stdout)["subscriptions"]
    assert sub["drift_watch"].startswith("inotify")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
