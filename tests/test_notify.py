"""sd_notify protocol against a real AF_UNIX datagram listener (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.notify import Notifier, watchdog_interval


class Listener:
    """A real NOTIFY_SOCKET, like systemd's: datagrams of newline-separated KEY=VALUE lines."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to: str | bytes = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def pending(self) -> int:
        self.sock.setblocking(False)
        count = 0
        try:
            while True:
                self.sock.recv(4096)
                count += 1
        except BlockingIOError:
            return count
        finally:
            self.sock.settimeout(5)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    address = str(tmp_path / "notify.sock") if request.param == "path" else f"@edu-test-{uuid.uuid4().hex}"
    listen = Listener(address)
    yield listen
    listen.sock.close()


def test_ready_status_stopping_reloading(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.env_value})
    assert notifier.enabled
    assert notifier.ready("loaded 3 subscriptions")
    msg = listener.receive()
    assert msg["READY"] == "1"
    assert msg["STATUS"] == "loaded 3 subscriptions"
    assert msg["MAINPID"] == str(os.getpid())

    notifier.status("applying\nsub-1")
    assert listener.receive() == {"STATUS": "applying sub-1"}

    notifier.reloading()
    msg = listener.receive()
    assert msg["RELOADING"] == "1"
    assert int(msg["MONOTONIC_USEC"]) > 0

    notifier.stopping("bye")
    assert listener.receive() == {"STOPPING": "1", "STATUS": "bye"}
    notifier.close()


def test_watchdog_pings_at_half_interval(listener: Listener) -> None:
    now = [100.0]
    env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env, clock=lambda: now[0])
    assert notifier.watchdog_timeout == 10.0
    assert notifier.ping_period == 5.0
    assert notifier.watchdog_due()
    assert listener.receive() == {"WATCHDOG": "1"}
    now[0] += 4.9
    assert not notifier.watchdog_due()
    now[0] += 0.2
    assert notifier.watchdog_due()
    assert listener.receive() == {"WATCHDOG": "1"}
    assert listener.pending() == 0


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000"}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "nonsense"}) is None
    assert watchdog_interval({}) is None


def test_without_notify_socket_everything_is_a_noop() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog_due()


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False


def test_a_listener_that_does_not_read_never_blocks_the_sender(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.env_value})
    results = [notifier.status(f"line {i}") for i in range(500)]  # far beyond the socket queue
    assert results[0] is True
    assert results[-1] is False  # dropped, not blocked
    assert listener.receive() == {"STATUS": "line 0"}
