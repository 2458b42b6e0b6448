"""The sshd fixture runs the documented chrooted configuration, and its fault controls work."""

from __future__ import annotations

import base64
import os
import socket
import stat
import subprocess

import paramiko
import pytest

from tests.sshd import Account, SshdServer


def _connect(server: SshdServer, account: Account) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    key_type, key_b64 = server.host_key_line.split()
    host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
    client.get_host_keys().add(f"[127.0.0.1]:{server.port}", host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        "127.0.0.1",
        port=server.port,
        username=account.user,
        key_filename=str(account.key_path),
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
    )
    return client


def test_sftp_lists_the_chroot(sshd: SshdServer, sftp_account: Account) -> None:
    (sftp_account.path("inbox") / "p1.pkg").write_bytes(b"x" * 10)
    with _connect(sshd, sftp_account) as client, client.open_sftp() as sftp:
        assert sorted(sftp.listdir("/")) == ["control", "inbox", "outbox"]
        assert sftp.normalize(".") == "/"  # chrooted: the agent sees its own directory as /
        assert [(a.filename, a.st_size) for a in sftp.listdir_attr("/inbox")] == [("p1.pkg", 10)]
        with pytest.raises(PermissionError):
            sftp.open("/inbox/evil", "w")
        with sftp.open("/outbox/r1", "w") as fh:
            fh.write(b"receipt")
    written = sftp_account.path("outbox", "r1")
    assert written.read_bytes() == b"receipt"
    assert written.stat().st_mode & 0o027 == 0  # ForceCommand internal-sftp -u 0027


def test_configuration_is_the_hubs(sshd: SshdServer, sftp_account: Account) -> None:
    config = sshd.config_path.read_text()
    assert f"Match User {sftp_account.user}" in config
    assert f"ChrootDirectory {sftp_account.chroot}" in config
    assert "ForceCommand internal-sftp" in config
    assert "UsePAM no" in config
    assert f"Port {sshd.port}" in config and "ListenAddress 127.0.0.1" in config
    assert "/etc/ssh" not in config
    assert stat.S_IMODE(sshd.host_key_path.stat().st_mode) == 0o600


def test_no_shell_for_the_agent(sshd: SshdServer, sftp_account: Account) -> None:
    with _connect(sshd, sftp_account) as client:
        _, stdout, _ = client.exec_command("id")
        # ForceCommand internal-sftp: whatever is asked, the SFTP server answers, never a shell.
        assert b"uid=" not in stdout.read()


def test_kill_ends_sessions_and_start_restores(sshd: SshdServer, sftp_account: Account) -> None:
    client = _connect(sshd, sftp_account)
    sftp = client.open_sftp()
    sftp.listdir("/")
    sshd.kill()
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        sftp.listdir("/")
    client.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", sshd.port), timeout=2):
        pass
    sshd.start()
    with _connect(sshd, sftp_account) as again, again.open_sftp() as sftp2:
        assert "inbox" in sftp2.listdir("/")


def test_users_removed_on_close(chroot_tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    server = SshdServer(Path(chroot_tmp_path) / "s")
    account = server.add_account("a1")
    server.start()
    assert subprocess.run(["id", account.user], capture_output=True, check=False).returncode == 0
    server.close()
    assert not server.running
    assert subprocess.run(["id", account.user], capture_output=True, check=False).returncode != 0


def test_chroot_tmp_path_satisfies_sshds_chroot_rules(chroot_tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from hub.sftp import check_chroot_parents

    check_chroot_parents(Path(chroot_tmp_path))


def test_first_start_moves_off_a_taken_port(chroot_tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    server = SshdServer(Path(chroot_tmp_path) / "s")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", server.port))
    squatter.listen(1)
    taken = server.port
    try:
        server.start()
        assert server.port != taken and server.running
    finally:
        squatter.close()
        server.close()


def test_without_root_sshd_is_reported_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: the documented chrooted configuration cannot run, and the reason says why."""
    from tests.sshd import SshdUnavailable, make_chroot_safe_dir

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SshdUnavailable, match="needs root"):
        make_chroot_safe_dir()
