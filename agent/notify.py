"""systemd ``Type=notify`` protocol (sd_notify) on ``$NOTIFY_SOCKET``, without libsystemd.

The service manager passes a datagram socket path in ``NOTIFY_SOCKET`` (a leading ``@``
means the Linux abstract namespace). Messages are newline-separated ``KEY=VALUE`` lines.
``WATCHDOG_USEC`` (optionally scoped by ``WATCHDOG_PID``) asks for ``WATCHDOG=1`` at least
that often; the daemon pings from its main loop — never from a helper thread — so a hung
loop stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds if systemd asks this process for pings, else None."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("notify.bad_watchdog_usec", value=usec)
        return None
    return value / 1_000_000 if value > 0 else None


class Notifier:
    """Sends sd_notify messages; every method is a no-op when not run under systemd."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or ""
        self._address: str | bytes | None = _socket_address(path) if path else None
        self._sock: socket.socket | None = None
        self._clock = clock
        self.watchdog_timeout = watchdog_interval(env)
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True when it was delivered."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the sync loop on the service manager: a full socket queue drops the message.
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self._address)
        except BlockingIOError:
            log.warning("notify.queue_full", dropped=lines[0].split("=", 1)[0])
            return False
        except OSError as exc:
            log.warning("notify.send_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
        lines.append(f"MAINPID={os.getpid()}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as ``Type=notify-reload`` requires; READY=1 ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """Ping unconditionally."""
        self._last_ping = self._clock()
        return self.send("WATCHDOG=1")

    def watchdog_due(self) -> bool:
        """Ping if half the watchdog interval has passed since the last ping (call it often)."""
        if self.watchdog_timeout is None or not self.enabled:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_timeout / 2:
            return False
        return self.watchdog()

    @property
    def ping_period(self) -> float | None:
        """How often the main loop must wake to keep the watchdog fed (half the timeout)."""
        return None if self.watchdog_timeout is None else self.watchdog_timeout / 2

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
