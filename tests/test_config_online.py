"""`config check` offline touches no network; `--online` tries real databases and the real platform."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from agent import exitcodes
from agent.cli import main
from tests.sshd import Account, SshdServer
from tests.test_config import BASE, BUNDLE, IDENTITY, write


def _site(tmp_path: Path) -> Path:
    shutil.copy(BUNDLE, tmp_path / "platform.json")
    for name in ("state", "keys", "share", "exchange/inbox", "exchange/control", "exchange/outbox"):
        (tmp_path / name).mkdir(parents=True)
    return tmp_path


def _local_config(site: Path, databases: dict[str, str]) -> Path:
    listed = "".join(f"    {name}: '{url}'\n" for name, url in databases.items())
    text = (
        BASE.replace("transport: sftp", "transport: local")
        .replace("sftp://agent1@127.0.0.1:2222/", "exchange")
        .replace("  identity_file: id_ed25519\n", "")
        .replace("    main: sqlite:///main.db\n", listed)
        .replace("  default_database: main\n", "")
    )
    return write(site, text)


def test_offline_check_opens_no_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site(tmp_path)
    shutil.copy(IDENTITY, site / "id_ed25519")
    (site / "id_ed25519").chmod(0o600)
    text = BASE.replace(
        "    main: sqlite:///main.db\n",
        "    main: postgresql+psycopg://edu@192.0.2.1/edu\n    other: mysql+pymysql://edu@192.0.2.2/edu\n",
    )
    path = write(site, text)

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"offline config check touched the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert main(["config", "check", "-c", str(path)]) == exitcodes.OK


def test_online_reaches_every_database_and_the_platform(
    tmp_path: Path, sqlite_url: str, pg_url: str, mysql_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path)
    path = _local_config(site, {"lite": sqlite_url, "pg": pg_url, "maria": mysql_url})
    assert main(["config", "check", "-c", str(path), "--online"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "ok    database lite: SELECT 1 answered (sqlite" in out
    assert "ok    database pg: SELECT 1 answered (postgresql" in out
    assert "ok    database maria: SELECT 1 answered (mysql" in out
    platform = [line.strip() for line in out.splitlines() if "platform " in line and ":" in line]
    assert [line.split(": ")[1] for line in platform[-3:]] == ["inbox/", "control/", "outbox/"]
    assert all(line.startswith("ok") for line in platform[-3:])
    assert "FAIL" not in out


def test_online_failure_exits_1_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = _site(tmp_path)
    shutil.rmtree(site / "exchange" / "outbox")
    path = _local_config(site, {"broken": f"sqlite:///{tmp_path}/no/such/dir/x.db"})
    assert main(["config", "check", "-c", str(path), "--online"]) == exitcodes.FAILURE
    out = capsys.readouterr().out
    assert "FAIL  database broken: unable to open database file" in out
    (outbox,) = [line for line in out.splitlines() if "platform" in line and "outbox/" in line]
    assert outbox.lstrip().startswith("FAIL  platform local directory")


def test_online_missing_secret_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path)
    text = (
        _local_config(site, {})
        .read_text()
        .replace(
            "  databases:\n",
            "  databases:\n    main:\n      url: sqlite:///x.db\n      password_env: EDU_TEST_UNSET_PW\n",
        )
    )
    path = write(site, text)
    assert main(["config", "check", "-c", str(path), "--online"]) == exitcodes.FAILURE
    assert "FAIL  database main: environment variable EDU_TEST_UNSET_PW is not set" in capsys.readouterr().out


def _sftp_config(site: Path, sshd: SshdServer, account: Account, host_key: str) -> Path:
    text = (
        BASE.replace("sftp://agent1@127.0.0.1:2222/", f"sftp://{account.user}@127.0.0.1:{sshd.port}/")
        .replace(BASE.split("host_key: ")[1].split("\n")[0], host_key)
        .replace("identity_file: id_ed25519", f"identity_file: {account.key_path}")
    )
    return write(site, text)


def test_online_sftp_platform_through_real_sshd(
    tmp_path: Path, sshd: SshdServer, sftp_account: Account, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path)
    path = _sftp_config(site, sshd, sftp_account, sshd.host_key_line)
    assert main(["config", "check", "-c", str(path), "--online"]) == exitcodes.OK, capsys.readouterr()
    out = capsys.readouterr().out
    assert "ok    platform" in out and "FAIL" not in out


def test_online_sftp_refuses_a_different_host_key(
    tmp_path: Path, sshd: SshdServer, sftp_account: Account, capsys: pytest.CaptureFixture[str]
) -> None:
    site = _site(tmp_path)
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcaEXgzi2XlO5Q81mMRkjDhH9wnYQDx+Lwi+K0cDHbE"
    path = _sftp_config(site, sshd, sftp_account, other)
    assert main(["config", "check", "-c", str(path), "--online"]) == exitcodes.FAILURE
    out = capsys.readouterr().out
    assert "FAIL  platform" in out and "host key" in out.lower()
