"""SFTP transport against a real OpenSSH sshd: trust, authentication, faults, timeouts, secrets."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from connectors.transports import (
    AuthenticationFailed,
    HostKeyError,
    RetryPolicy,
    SftpSettings,
    SftpTransport,
    TransportError,
    TransportUnavailable,
)
from protocol.layout import is_temp_name
from tests.sshd import Account, SshdServer, generate_key


class SleepRecorder:
    """Records backoff waits; optionally really sleeps (a restarting server needs the time)."""

    def __init__(self, real: bool = False) -> None:
        self.waits: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.real:
            time.sleep(seconds)


def settings(sshd: SshdServer, account: Account, **overrides: object) -> SftpSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": sshd.port,
        "username": account.user,
        "identity_file": account.key_path,
        "host_key": sshd.host_key_line,
        "connect_timeout": 5.0,
        "operation_timeout": 10.0,
        "retry": RetryPolicy(attempts=4, initial=0.1, maximum=0.5),
    }
    values.update(overrides)
    return SftpSettings(**values)  # type: ignore[arg-type]


def _fingerprint_of(sshd: SshdServer) -> str:
    import paramiko

    from connectors.transports.sftp import parse_host_key

    key: paramiko.PKey = parse_host_key(sshd.host_key_line)
    return str(key.fingerprint)


def _big_file(account: Account, name: str, mib: int) -> tuple[Path, str]:
    path = account.path("inbox", name)
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for i in range(mib):
            block = hashlib.sha256(i.to_bytes(4, "big")).digest() * 32768  # 1 MiB
            fh.write(block)
            digest.update(block)
    return path, digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- trust and authentication ---------------------------------------------------------------
def test_wrong_host_key_is_refused_with_both_fingerprints(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    impostor = generate_key(tmp_path / "other_host_key")
    sleep = SleepRecorder()
    transport = SftpTransport(settings(sshd, sftp_account, host_key=impostor), sleep=sleep)
    with pytest.raises(HostKeyError) as info:
        transport.listdir("inbox")
    message = str(info.value)
    assert "mismatch" in message
    assert _fingerprint_of(sshd) in message  # what the server offered
    from connectors.transports.sftp import parse_host_key

    assert str(parse_host_key(impostor).fingerprint) in message  # what we pinned
    assert sleep.waits == []  # never retried: a wrong key is not a network blip
    assert transport.connections == 0


def test_unpinned_host_key_is_refused_and_shown(sshd: SshdServer, sftp_account: Account) -> None:
    transport = SftpTransport(settings(sshd, sftp_account, host_key=None))
    with pytest.raises(HostKeyError, match="no host key is pinned") as info:
        transport.read("control/x")
    assert _fingerprint_of(sshd) in str(info.value)


def test_pinned_key_of_another_type_is_refused(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True)
    pinned = (tmp_path / "ec.pub").read_text()
    transport = SftpTransport(settings(sshd, sftp_account, host_key=pinned))
    with pytest.raises(HostKeyError, match="ecdsa-sha2-nistp256"):
        transport.listdir("inbox")


def test_known_hosts_style_pin_is_accepted(sshd: SshdServer, sftp_account: Account) -> None:
    with SftpTransport(settings(sshd, sftp_account, host_key=sshd.known_hosts_line())) as transport:
        assert transport.listdir("inbox") == []


def test_foreign_client_key_is_refused_without_retry(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    generate_key(tmp_path / "stranger")
    sleep = SleepRecorder()
    transport = SftpTransport(settings(sshd, sftp_account, identity_file=tmp_path / "stranger"), sleep=sleep)
    with pytest.raises(AuthenticationFailed, match=sftp_account.user):
        transport.listdir("inbox")
    assert sleep.waits == []


def test_identity_file_open_to_others_is_refused(sshd: SshdServer, sftp_account: Account) -> None:
    os.chmod(sftp_account.key_path, 0o644)
    with pytest.raises(TransportError, match="chmod 600"):
        SftpTransport(settings(sshd, sftp_account))


def test_garbage_identity_file_error_shows_no_content(sshd: SshdServer, sftp_account: Account) -> None:
    secret_text = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
    sftp_account.key_path.write_text(secret_text)
    with pytest.raises(TransportError, match="not a usable SSH private key") as info:
        SftpTransport(settings(sshd, sftp_account))
    assert "c2VjcmV0" not in str(info.value)


def test_secrets_never_reach_the_log(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Connect, transfer, fail auth, with paramiko at DEBUG: no private key material is logged."""
    private_text = sftp_account.key_path.read_text()
    body = "".join(line for line in private_text.splitlines() if "PRIVATE KEY" not in line)
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(sftp_account.key_path))
    raw_private = key._signing_key.encode()  # type: ignore[attr-defined]
    secrets = [body, body[20:60], raw_private.hex(), raw_private.hex().upper()]

    sftp_account.path("inbox", "p").write_bytes(b"x" * 100_000)
    generate_key(tmp_path / "stranger")
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as structured:
        with SftpTransport(settings(sshd, sftp_account)) as transport:
            transport.fetch("inbox/p", tmp_path / "p")
            (tmp_path / "r").write_bytes(b"receipt")
            transport.put(tmp_path / "r", "outbox/r")
        with pytest.raises(AuthenticationFailed):
            SftpTransport(settings(sshd, sftp_account, identity_file=tmp_path / "stranger")).listdir("inbox")
    text = caplog.text + repr(structured)
    assert any(r.name.startswith("paramiko") for r in caplog.records)  # its DEBUG log was captured
    assert any(e.get("event") == "sftp.connected" for e in structured)
    for secret in secrets:
        assert secret not in text


# -- faults ---------------------------------------------------------------------------------
@pytest.fixture
def restart_later(sshd: SshdServer) -> Iterator[Callable[[float], None]]:
    """Schedules ``sshd.start()``; waits for it at teardown so no sshd outlives its fixture."""
    timers: list[threading.Timer] = []

    def schedule(delay: float) -> None:
        timer = threading.Timer(delay, sshd.start)
        timers.append(timer)
        timer.start()

    yield schedule
    for timer in timers:
        timer.join()


def test_sshd_killed_mid_transfer_and_restarted_resumes(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path, restart_later: Callable[[float], None]
) -> None:
    """A crash of the server at a third of a 48 MiB download; it comes back 1.5 s later. The
    transport backs off, reconnects, continues from the bytes on disk, and the file is exact."""
    _, expected = _big_file(sftp_account, "big.pkg", 48)
    size = 48 * 1024 * 1024
    sleep = SleepRecorder(real=True)
    transport = SftpTransport(
        settings(sshd, sftp_account, retry=RetryPolicy(attempts=12, initial=0.25, maximum=2.0)), sleep=sleep
    )
    progress: list[int] = []
    killed_at: list[int] = []

    def on_progress(done: int, _total: int) -> None:
        progress.append(done)
        if not killed_at and done >= size // 3:
            killed_at.append(done)
            sshd.kill()  # synchronously, from inside the transfer: deterministic
            restart_later(1.5)

    local = tmp_path / "big.part"
    with transport:
        assert transport.fetch("inbox/big.pkg", local, on_progress) == size
    assert _sha256(local) == expected
    assert transport.connections >= 2
    assert sleep.waits, "the reconnect must have backed off while sshd was down"
    # Resumed, not restarted: after the crash, progress never went back below the crash point.
    after = progress[progress.index(killed_at[0]) + 1 :]
    assert after and min(after) > killed_at[0]


def test_dropped_connection_mid_transfer_resumes(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    _, expected = _big_file(sftp_account, "p.pkg", 16)
    dropped: list[int] = []

    def on_progress(done: int, _total: int) -> None:
        if not dropped and done >= 4 * 1024 * 1024:
            dropped.append(done)
            sshd.drop_connections()

    sleep = SleepRecorder(real=True)
    with SftpTransport(settings(sshd, sftp_account), sleep=sleep) as transport:
        transport.fetch("inbox/p.pkg", tmp_path / "p", on_progress)
        assert transport.connections == 2
    assert _sha256(tmp_path / "p") == expected


def test_put_survives_a_dropped_connection(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection breaks with the temporary half written; the retry uploads afresh, and the
    broken try's temporary is removed once the server is reachable again."""
    import connectors.transports.sftp as sftp_module

    local = tmp_path / "report"
    local.write_bytes(os.urandom(8 * 1024 * 1024))
    real_upload = sftp_module.upload
    seen_partial: list[list[str]] = []

    class BreakAfterTwoBlocks:
        def __init__(self, source: Any) -> None:
            self.source, self.blocks = source, 0

        def read(self, n: int) -> bytes:
            self.blocks += 1
            if self.blocks == 3 and not seen_partial:
                time.sleep(0.2)  # let the first writes land
                seen_partial.append(os.listdir(sftp_account.path("outbox")))
                sshd.drop_connections()
            data: bytes = self.source.read(n)
            return data

    def flaky_upload(sftp: Any, path: str, source: Any, *args: Any) -> int:
        return real_upload(sftp, path, BreakAfterTwoBlocks(source), *args)

    monkeypatch.setattr(sftp_module, "upload", flaky_upload)
    with SftpTransport(settings(sshd, sftp_account), sleep=SleepRecorder(real=True)) as transport:
        transport.put(local, "outbox/report")
        assert transport.connections == 2
    assert len(seen_partial[0]) == 1 and is_temp_name(seen_partial[0][0])  # it was there, half written
    assert sftp_account.path("outbox", "report").read_bytes() == local.read_bytes()
    assert os.listdir(sftp_account.path("outbox")) == ["report"]  # and now it is gone


def test_a_temporary_that_could_not_be_removed_goes_with_the_next_upload(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed upload whose temporary cannot be removed at once (the remove itself fails) must
    not forget it: the next successful upload removes it."""
    import io

    import paramiko

    import connectors.transports.sftp as sftp_module

    local = tmp_path / "report"
    local.write_bytes(os.urandom(100_000))
    real_upload, real_remove = sftp_module.upload, paramiko.SFTPClient.remove
    removes_refused: list[str] = []

    def half_then_refused(sftp: Any, path: str, source: Any, *args: Any) -> int:
        real_upload(sftp, path, io.BytesIO(source.read(1000)), *args)  # the temporary exists
        raise PermissionError(13, "Permission denied")

    def remove_refused_once(self: paramiko.SFTPClient, path: str) -> None:
        if not removes_refused:
            removes_refused.append(path)
            raise OSError("Socket is closed")
        real_remove(self, path)

    monkeypatch.setattr(paramiko.SFTPClient, "remove", remove_refused_once)
    with SftpTransport(settings(sshd, sftp_account)) as transport:
        monkeypatch.setattr(sftp_module, "upload", half_then_refused)
        with pytest.raises(TransportError, match="permission denied"):
            transport.put(local, "outbox/report")
        left = os.listdir(sftp_account.path("outbox"))
        assert len(left) == 1 and is_temp_name(left[0]) and removes_refused[0].endswith(left[0])
        monkeypatch.setattr(sftp_module, "upload", real_upload)
        transport.put(local, "outbox/report")
    assert sftp_account.path("outbox", "report").read_bytes() == local.read_bytes()
    assert os.listdir(sftp_account.path("outbox")) == ["report"]


def test_backoff_is_bounded_when_the_server_stays_down(sshd: SshdServer, sftp_account: Account) -> None:
    sshd.stop()
    sleep = SleepRecorder()
    policy = RetryPolicy(attempts=5, initial=1.0, multiplier=2.0, maximum=3.0, jitter=0.5)
    transport = SftpTransport(settings(sshd, sftp_account, retry=policy), sleep=sleep)
    started = time.monotonic()
    with pytest.raises(TransportUnavailable, match="after 5 attempts") as info:
        transport.listdir("inbox")
    assert time.monotonic() - started < 5  # the waits were recorded, not slept
    assert isinstance(info.value.__cause__, OSError)
    assert len(sleep.waits) == 4
    for n, wait in enumerate(sleep.waits):
        ceiling = min(3.0, 1.0 * 2**n)
        assert ceiling * 0.5 <= wait <= ceiling


def test_server_back_after_outage_is_reached(
    sshd: SshdServer, sftp_account: Account, restart_later: Callable[[float], None]
) -> None:
    sshd.stop()
    restart_later(0.5)
    sleep = SleepRecorder(real=True)
    with SftpTransport(
        settings(sshd, sftp_account, retry=RetryPolicy(attempts=10, initial=0.2, maximum=1.0)), sleep=sleep
    ) as transport:
        assert transport.listdir("inbox") == []
    assert sleep.waits


# -- timeouts -------------------------------------------------------------------------------
@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never says anything (a hung or filtered service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_connect_timeout(silent_server: int, sshd: SshdServer, sftp_account: Account) -> None:
    transport = SftpTransport(
        settings(sshd, sftp_account, port=silent_server, connect_timeout=0.5, retry=RetryPolicy(attempts=2)),
        sleep=SleepRecorder(),
    )
    started = time.monotonic()
    with pytest.raises(TransportUnavailable, match="after 2 attempts"):
        transport.listdir("inbox")
    assert time.monotonic() - started < 10


def test_operation_timeout_on_a_hung_server_reconnects(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    """The session stops answering mid-conversation: the operation times out instead of hanging,
    and the retry on a fresh connection succeeds."""
    sftp_account.path("control", "subs").write_bytes(b"{}")
    transport = SftpTransport(settings(sshd, sftp_account, operation_timeout=1.0), sleep=SleepRecorder())
    with transport:
        assert [e.name for e in transport.listdir("control")] == ["subs"]
        paused = sshd.pause_sessions()
        try:
            started = time.monotonic()
            assert transport.read("control/subs") == b"{}"
            assert 0.9 < time.monotonic() - started < 8
        finally:
            sshd.resume_sessions(paused)
        assert transport.connections == 2


def test_keepalive_is_enabled(sshd: SshdServer, sftp_account: Account) -> None:
    with SftpTransport(settings(sshd, sftp_account, keepalive_interval=7)) as transport:
        transport.listdir("inbox")
        assert transport._ssh is not None
        packetizer = transport._ssh.packetizer
        assert packetizer._Packetizer__keepalive_interval == 7  # type: ignore[attr-defined]


def test_check_reports_a_refused_host_key(sshd: SshdServer, sftp_account: Account, tmp_path: Path) -> None:
    wrong = generate_key(tmp_path / "other")
    results = SftpTransport(settings(sshd, sftp_account, host_key=wrong)).check()
    assert len(results) == 1 and not results[0].ok and "mismatch" in results[0].detail


# -- pipelining details ----------------------------------------------------------------------
def test_short_reads_are_completed_in_order(sshd: SshdServer, sftp_account: Account) -> None:
    """Requests larger than the server answers (sshd caps a READ at 255 KiB) come back short:
    the reader asks for the rest and adapts, and the bytes still arrive complete and in order."""
    from connectors.transports.pipeline import read_range

    path, expected = _big_file(sftp_account, "p", 5)
    with SftpTransport(settings(sshd, sftp_account)) as transport:
        transport.listdir("inbox")
        sftp = transport._sftp
        assert sftp is not None
        with sftp.open("/inbox/p", "rb") as handle:
            chunks = list(read_range(sftp, handle.handle, 1000, 5 * 1024 * 1024, 1024 * 1024, 4))
    data = b"".join(chunks)
    assert data == path.read_bytes()[1000:]
    assert max(len(c) for c in chunks) <= 255 * 1024
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected


def test_file_shrinking_during_fetch_is_an_error(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    path, _ = _big_file(sftp_account, "p", 16)

    def truncate(done: int, _total: int) -> None:
        if done > 2 * 1024 * 1024 and path.stat().st_size > 1024 * 1024:
            os.truncate(path, 1024 * 1024)

    with (
        SftpTransport(settings(sshd, sftp_account)) as transport,
        pytest.raises(TransportError, match="shrank"),
    ):
        transport.fetch("inbox/p", tmp_path / "p", truncate)


def test_open_transport_maps_the_platform_section(sshd: SshdServer, sftp_account: Account) -> None:
    from datetime import timedelta

    from agent.config import PlatformSection
    from connectors.transports import open_transport

    platform = PlatformSection.model_construct(
        transport="sftp",
        url=f"sftp://{sftp_account.user}@127.0.0.1:{sshd.port}/",
        host_key=sshd.host_key_line,
        identity_file=sftp_account.key_path,
        connect_timeout=timedelta(seconds=7),
        operation_timeout=timedelta(seconds=70),
        keepalive_interval=timedelta(seconds=11),
    )
    with open_transport(platform) as transport:
        assert isinstance(transport, SftpTransport)
        assert (transport.settings.connect_timeout, transport.settings.operation_timeout) == (7, 70)
        assert transport.settings.keepalive_interval == 11 and transport.settings.root == "/"
        results = transport.check()
    assert all(r.ok for r in results), results
    assert "matches the pinned key" in results[0].detail


@pytest.fixture
def tiny_outbox(sftp_account: Account) -> Iterator[Path]:
    """The agent's outbox on a 1 MiB filesystem: the server's writes fail with ENOSPC."""
    import subprocess

    outbox = sftp_account.path("outbox")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=2770", "edu-test-outbox", str(outbox)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        stat_before = sftp_account.path().stat()
        os.chown(outbox, pwd_uid(sftp_account.user), stat_before.st_gid)
        yield outbox
    finally:
        subprocess.run(["umount", str(outbox)], check=False)


def pwd_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def test_failed_server_writes_never_become_a_file(
    sshd: SshdServer, sftp_account: Account, tiny_outbox: Path, tmp_path: Path
) -> None:
    """Every pipelined WRITE's status is checked: a full disk on the platform is an error, and no
    truncated report appears under its final name."""
    local = tmp_path / "report"
    local.write_bytes(os.urandom(4 * 1024 * 1024))
    with SftpTransport(settings(sshd, sftp_account), sleep=SleepRecorder()) as transport:
        with pytest.raises(TransportError, match="put outbox/report"):
            transport.put(local, "outbox/report")
        assert transport.listdir("outbox") == []
    assert not (tiny_outbox / "report").exists()
    assert os.listdir(tiny_outbox) == []  # the temporary was removed too


def test_file_replaced_between_attempts_is_fetched_afresh(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path
) -> None:
    """Resuming is only sound onto the same file: if it changed on the server while the
    connection was down, the download starts over instead of splicing two files."""
    path, _ = _big_file(sftp_account, "p", 24)  # far more than the reads in flight (4 MiB)
    replacement = os.urandom(24 * 1024 * 1024)
    done_once: list[int] = []

    def replace_and_drop(done: int, _total: int) -> None:
        if not done_once and done >= 2 * 1024 * 1024:
            done_once.append(done)
            tmp = path.with_name(".p.new")
            tmp.write_bytes(replacement)
            os.utime(tmp, (time.time() + 100, time.time() + 100))
            os.replace(tmp, path)
            sshd.drop_connections()

    with SftpTransport(settings(sshd, sftp_account), sleep=SleepRecorder(real=True)) as transport:
        transport.fetch("inbox/p", tmp_path / "p", replace_and_drop)
        assert transport.connections == 2
    assert (tmp_path / "p").read_bytes() == replacement


def test_crash_loop_during_one_download(sshd: SshdServer, sftp_account: Account, tmp_path: Path) -> None:
    """Five server crashes (listener and sessions SIGKILLed, then restarted) during one 40 MiB
    download, spaced wider than the reads in flight: five resumes, one exact file."""
    _, expected = _big_file(sftp_account, "p", 40)
    crash_points = [3, 10, 17, 24, 31]  # MiB
    crashes: list[int] = []

    def crash(done: int, _total: int) -> None:
        if crash_points and done >= crash_points[0] * 1024 * 1024:
            crash_points.pop(0)
            crashes.append(done)
            sshd.kill()
            sshd.start()

    policy = RetryPolicy(attempts=6, initial=0.05, maximum=0.5)
    with SftpTransport(
        settings(sshd, sftp_account, retry=policy), sleep=SleepRecorder(real=True)
    ) as transport:
        transport.fetch("inbox/p", tmp_path / "p", crash)
        assert transport.connections == 6
    assert len(crashes) == 5
    assert _sha256(tmp_path / "p") == expected


def test_reads_are_large_and_pipelined(
    sshd: SshdServer, sftp_account: Account, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never small one-at-a-time reads: every READ (but the last) is 255 KiB, and 16 are in
    flight before the first answer is consumed."""
    import paramiko
    from paramiko.sftp import CMD_READ

    _big_file(sftp_account, "p", 16)
    events: list[tuple[str, int]] = []
    real_request = paramiko.SFTPClient._async_request  # type: ignore[attr-defined]
    real_response = paramiko.SFTPClient._read_response  # type: ignore[attr-defined]

    def request(self: Any, fileobj: Any, kind: int, *args: Any) -> Any:
        if kind == CMD_READ:
            events.append(("read", int(args[-1])))
        return real_request(self, fileobj, kind, *args)

    def response(self: Any, *args: Any) -> Any:
        events.append(("answer", 0))
        return real_response(self, *args)

    monkeypatch.setattr(paramiko.SFTPClient, "_async_request", request)
    monkeypatch.setattr(paramiko.SFTPClient, "_read_response", response)
    with SftpTransport(settings(sshd, sftp_account)) as transport:
        transport.fetch("inbox/p", tmp_path / "p")
    sizes = [n for kind, n in events if kind == "read"]
    assert sum(sizes) == 16 * 1024 * 1024
    assert all(n == 255 * 1024 for n in sizes[:-1])
    outstanding = peak = 0
    first_read = events.index(("read", sizes[0]))  # earlier answers were OPEN and FSTAT
    for kind, _ in events[first_read:]:
        outstanding += 1 if kind == "read" else -1
        peak = max(peak, outstanding)
    assert peak >= 16


def test_empty_upload(sshd: SshdServer, sftp_account: Account, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with SftpTransport(settings(sshd, sftp_account)) as transport:
        transport.put(tmp_path / "empty", "outbox/empty")
    assert sftp_account.path("outbox", "empty").read_bytes() == b""
    assert os.listdir(sftp_account.path("outbox")) == ["empty"]
