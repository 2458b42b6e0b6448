"""A real OpenSSH sshd for tests and benches, configured exactly as docs/hub.md documents.

:class:`SshdServer` is a plain class (``bench/transport.py`` uses it too); the pytest fixtures at
the bottom wrap it. The server runs ``/usr/sbin/sshd -D -e -f <own config>`` on a free loopback
port with a temporary ed25519 host key — never the system config, host key or port 22. Its
configuration comes from :func:`hub.sftp.render_sshd_config` (one chrooted ``Match User`` block
per agent, ``ForceCommand internal-sftp``), plus the few global options a private test server
needs (``UsePAM no``, ``AllowUsers`` of its own accounts only).

Why root: chroot and per-agent system users are the documented configuration, and both need
root. We are root in the sandbox and in CI. Without root the fixtures report sshd as unavailable
(skip, or fail under ``EDU_REQUIRE_SERVICES=1``) rather than test a different configuration.

Why not under ``/tmp``: sshd refuses a chroot with any world-writable component, so every
server works under :data:`BASE_DIR` (root-owned 0755; override with ``EDU_TEST_SSHD_BASE``).
Users and directories carry the creating process id, so leftovers of a killed run are removed by
the next one (:func:`remove_stale`).

Fault injection: :meth:`SshdServer.kill` SIGKILLs the listener *and* every per-connection
process (they call ``setsid()``, so a process-group kill would miss them), like a crashed host;
:meth:`SshdServer.start` brings it back on the same port.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from hub.sftp import (
    SftpAccount,
    apply_layout,
    chroot_layout,
    render_sshd_config,
    useradd_command,
    write_authorized_key,
)

SSHD = "/usr/sbin/sshd"
BASE_DIR = Path(os.environ.get("EDU_TEST_SSHD_BASE", "/var/lib/edu-sync-agent-tests"))
_OWNER_TAG = "edu-sync-agent test sshd pid="
_START_TIMEOUT = 10.0


class SshdUnavailable(RuntimeError):
    """sshd cannot run here (not installed, not root, or it refused to start)."""


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SshdUnavailable(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Delete users and work directories left by test processes that no longer exist."""
    for entry in pwd.getpwall():
        if entry.pw_gecos.startswith(_OWNER_TAG):
            pid = entry.pw_gecos[len(_OWNER_TAG) :]
            if pid.isdigit() and not _pid_alive(int(pid)):
                subprocess.run(["userdel", entry.pw_name], capture_output=True, check=False)
    if BASE_DIR.is_dir():
        for child in BASE_DIR.iterdir():
            parts = child.name.split("-")
            if len(parts) >= 2 and parts[0] == "run" and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                shutil.rmtree(child, ignore_errors=True)


def make_chroot_safe_dir() -> Path:
    """A fresh directory whose every path component satisfies sshd's chroot rules."""
    if os.geteuid() != 0:
        raise SshdUnavailable("the documented chrooted configuration needs root (chroot, system users)")
    BASE_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(BASE_DIR, 0o755)  # noqa: S103 - a chroot parent must be root-owned and world-traversable
    path = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=BASE_DIR))
    os.chmod(path, 0o755)  # noqa: S103
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (by parent pid), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def generate_key(path: Path, comment: str = "edu-test") -> str:
    """An OpenSSH ed25519 key pair at ``path`` (0600) / ``path.pub``; returns the public line."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_name(path.name + ".pub").read_text().strip()


class Account:
    """One agent login on the test server: documented account plus its client key."""

    def __init__(self, sftp: SftpAccount, key_path: Path, public_key: str) -> None:
        self.sftp = sftp
        self.key_path = key_path
        self.public_key = public_key

    @property
    def user(self) -> str:
        return self.sftp.user

    @property
    def chroot(self) -> Path:
        return self.sftp.chroot

    def path(self, *parts: str) -> Path:
        """A path inside the agent's chroot, as the hub sees it."""
        return self.sftp.chroot.joinpath(*parts)


class SshdServer:
    """A private sshd on 127.0.0.1, with chrooted SFTP accounts created on demand."""

    def __init__(self, workdir: Path, hub_user: str = "root") -> None:
        if not os.path.exists(SSHD):
            raise SshdUnavailable(f"{SSHD} is not installed")
        self.workdir = workdir
        self.hub_user = hub_user
        self.exchange_dir = workdir / "exchange"
        self.keys_dir = workdir / "authorized_keys"
        self.config_path = workdir / "sshd_config"
        self.log_path = workdir / "sshd.log"
        self.host_key_path = workdir / "host_ed25519_key"
        self.exchange_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.host_key = generate_key(self.host_key_path, "edu-test-host")
        # The pinnable line (type and base64, no comment), as the agent's config holds it.
        self.host_key_line = " ".join(self.host_key.split()[:2])
        self.port = _free_port()
        self.accounts: list[Account] = []
        self._users_created: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- accounts -------------------------------------------------------------------------
    def add_account(
        self, agent_id: str = "agent1", chroot: Path | None = None, public_key: str | None = None
    ) -> Account:
        """Create the agent's system user, chroot layout and authorized key; restart if running.

        The user name is unique (``edu-t<hex>``) so concurrent test runs on one machine never
        share an account; ``chroot`` defaults to ``<exchange>/<agent_id>``. Without
        ``public_key`` a client key is generated at ``account.key_path``; with it, that key is
        installed instead (and ``key_path`` does not exist).
        """
        user = f"edu-t{uuid.uuid4().hex[:10]}"
        sftp = SftpAccount.for_agent(self.exchange_dir, agent_id, user=user)
        if chroot is not None:
            sftp = SftpAccount(agent_id, user, chroot.absolute())
        useradd = useradd_command(sftp)
        useradd[-1:-1] = ["--comment", f"{_OWNER_TAG}{os.getpid()}"]  # options before the name
        _run(useradd)
        self._users_created.append(user)
        apply_layout(chroot_layout(sftp, hub_user=self.hub_user))
        key_path = self.workdir / f"id_{agent_id}_{user}"
        if public_key is None:
            public_key = generate_key(key_path, f"{agent_id}@edu-test")
        write_authorized_key(self.keys_dir, sftp, public_key)
        account = Account(sftp, key_path, public_key)
        self.accounts.append(account)
        if self.running:
            self.stop()
            self.start()
        return account

    # -- configuration --------------------------------------------------------------------
    def render_config(self) -> str:
        """Our private globals, then exactly the hub's documented blocks."""
        users = " ".join(a.user for a in self.accounts)
        private = [
            "# Test sshd: private globals (production takes these from the system config).",
            "UsePAM no",
            "LogLevel VERBOSE",
            "MaxStartups 100",
            "MaxSessions 10",
            "ClientAliveInterval 15",
            "ClientAliveCountMax 3",
            f"AllowUsers {users}" if users else "DenyUsers *",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "",
        ]
        hub = render_sshd_config(
            [a.sftp for a in self.accounts],
            self.keys_dir,
            listen_address="127.0.0.1",
            port=self.port,
            host_keys=[self.host_key_path],
            pid_file=self.workdir / "sshd.pid",
        )
        return "\n".join(private) + hub

    def known_hosts_line(self) -> str:
        """An OpenSSH known_hosts entry for this server (for the ``sftp`` client)."""
        return f"[127.0.0.1]:{self.port} {self.host_key_line}"

    # -- process control ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start sshd and wait until it answers with an SSH banner.

        The first start takes another free port if this one was grabbed meanwhile (tests run in
        parallel on one machine); a restart keeps the port its clients know.
        """
        if self.running:
            return
        for _ in range(3):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._launch()
            except SshdUnavailable:
                new_log = self.log_path.read_bytes()[log_offset:]
                if self._started_once or b"Address already in use" not in new_log:
                    raise
                self.port = _free_port()
                continue
            self._started_once = True
            return
        raise SshdUnavailable(f"no free port for sshd: {self.log_tail()}")

    def _launch(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.config_path.write_text(self.render_config())
        os.chmod(self.config_path, 0o600)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                raise SshdUnavailable(f"sshd exited with {code}: {self.log_tail()}")
            if self._banner():
                return
            time.sleep(0.02)
        self.kill()
        raise SshdUnavailable(f"sshd did not answer on 127.0.0.1:{self.port}: {self.log_tail()}")

    def _banner(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def stop(self) -> None:
        """Orderly stop: SIGTERM the listener, then end any session it leaves behind."""
        if self._process is None:
            return
        sessions = _descendants(self._process.pid)
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._signal(sessions, signal.SIGTERM)
        self._signal(sessions, signal.SIGCONT)  # a paused session must wake up to end
        self._process = None

    def kill(self) -> None:
        """Crash: SIGKILL the listener and every per-connection process at once."""
        if self._process is None:
            return
        victims = [self._process.pid, *_descendants(self._process.pid)]
        self._signal(victims, signal.SIGKILL)
        self._process.wait()
        self._process = None

    def drop_connections(self) -> None:
        """SIGKILL the sessions only; the listener keeps accepting (a network cut)."""
        if self._process is not None:
            self._signal(_descendants(self._process.pid), signal.SIGKILL)

    def pause_sessions(self) -> list[int]:
        """SIGSTOP the current sessions (a hung server); returns them for :meth:`resume_sessions`."""
        sessions = _descendants(self._process.pid) if self._process is not None else []
        self._signal(sessions, signal.SIGSTOP)
        return sessions

    def resume_sessions(self, sessions: list[int]) -> None:
        self._signal(sessions, signal.SIGCONT)

    @staticmethod
    def _signal(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop the server and delete the users it created (directories are the caller's)."""
        self.stop()
        for user in self._users_created:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        self._users_created.clear()


# -- pytest fixtures ------------------------------------------------------------------------
def _unavailable(exc: BaseException) -> NoReturn:
    from tests.conftest import service_unavailable

    service_unavailable("OpenSSH sshd", exc)  # skips, or fails under EDU_REQUIRE_SERVICES=1
    raise exc  # not reached


@pytest.fixture
def chroot_tmp_path() -> Iterator[Path]:
    """Like ``tmp_path``, but usable as (a parent of) an sshd chroot; removed afterwards."""
    try:
        remove_stale()
        path = make_chroot_safe_dir()
    except SshdUnavailable as exc:
        _unavailable(exc)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sshd(chroot_tmp_path: Path) -> Iterator[SshdServer]:
    """A running private sshd (no accounts yet: see ``sftp_account`` or ``add_account``)."""
    try:
        server = SshdServer(chroot_tmp_path / "sshd")
        server.start()
    except SshdUnavailable as exc:
        _unavailable(exc)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sftp_account(sshd: SshdServer) -> Account:
    """One chrooted agent account (agent id ``agent1``) on the running ``sshd``."""
    try:
        return sshd.add_account("agent1")
    except SshdUnavailable as exc:
        _unavailable(exc)
