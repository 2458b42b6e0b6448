"""The sshd_config block and chroot ownership the hub documents for serving agents."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hub.sftp import (
    SftpAccount,
    SftpConfigError,
    apply_layout,
    check_agent_id,
    check_chroot_parents,
    chroot_layout,
    render_sshd_config,
    system_user,
    write_authorized_key,
)

SSHD = "/usr/sbin/sshd"


def test_system_user_maps_agent_id() -> None:
    assert system_user("school-1") == "edu-school-1"
    for bad in ["", "School", "a b", "../x", "x" * 29, "-x", "a;b", "学校"]:
        with pytest.raises(SftpConfigError, match="agent id"):
            check_agent_id(bad)


def test_block_contains_the_lockdown(tmp_path: Path) -> None:
    account = SftpAccount.for_agent(tmp_path / "exchange", "school-1")
    text = render_sshd_config([account], tmp_path / "keys")
    assert "Match User edu-school-1" in text
    assert f"ChrootDirectory {tmp_path / 'exchange' / 'school-1'}" in text
    assert "ForceCommand internal-sftp" in text
    assert "PasswordAuthentication no" in text
    assert "DisableForwarding yes" in text
    assert f"AuthorizedKeysFile {tmp_path / 'keys'}/%u" in text


def test_refuses_unsafe_config_values(tmp_path: Path) -> None:
    account = SftpAccount("a", "edu-a", tmp_path / "with space")
    with pytest.raises(SftpConfigError, match="chroot directory"):
        render_sshd_config([account], tmp_path / "keys")


@pytest.mark.skipif(not os.path.exists(SSHD), reason="OpenSSH sshd not installed")
def test_sshd_accepts_and_applies_the_config(tmp_path: Path) -> None:
    """sshd -t parses it; sshd -T shows the effective settings for the agent's user."""
    host_key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    accounts = [SftpAccount.for_agent(tmp_path / "ex", a) for a in ("school-1", "bureau_2")]
    config = tmp_path / "sshd_config"
    config.write_text(
        render_sshd_config(
            accounts,
            tmp_path / "keys",
            listen_address="127.0.0.1",
            port=2222,
            host_keys=[host_key],
            pid_file=tmp_path / "pid",
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    effective = subprocess.run(
        [SSHD, "-T", "-f", str(config), "-C", "user=edu-bureau_2,host=h,addr=127.0.0.1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert f"chrootdirectory {tmp_path / 'ex' / 'bureau_2'}" in effective
    assert "forcecommand internal-sftp -u 0027" in effective
    assert "passwordauthentication no" in effective
    assert "allowtcpforwarding no" in effective
    assert "permittty no" in effective
    other = subprocess.run(
        [SSHD, "-T", "-f", str(config), "-C", "user=nobody,host=h,addr=127.0.0.1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert "chrootdirectory none" in other


def test_layout_modes_and_owners(tmp_path: Path) -> None:
    account = SftpAccount.for_agent(tmp_path / "ex", "school-1", user="root")
    specs = {s.path.name: s for s in chroot_layout(account, hub_user="root")}
    chroot = specs["school-1"]
    assert (chroot.owner, chroot.mode) == ("root", 0o755)
    assert specs["inbox"].mode & 0o002 == 0 and specs["inbox"].owner == "root"
    assert specs["outbox"].owner == account.user
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    apply_layout(chroot_layout(account, hub_user="root"))
    assert (account.chroot / "inbox").stat().st_mode & 0o7777 == 0o2750
    assert (account.chroot / "outbox").stat().st_mode & 0o7777 == 0o2770
    with pytest.raises(SftpConfigError, match="no such user"):
        apply_layout(chroot_layout(SftpAccount.for_agent(tmp_path / "ex", "ghost"), hub_user="root"))


def test_chroot_parents_under_tmp_are_refused(tmp_path: Path) -> None:
    """/tmp is world-writable: sshd would refuse such a chroot, and so does the hub's check."""
    with pytest.raises(SftpConfigError, match="not group/other-writable"):
        check_chroot_parents(tmp_path)


def test_authorized_key_installed(tmp_path: Path) -> None:
    account = SftpAccount.for_agent(tmp_path / "ex", "school-1")
    key = shutil.which("ssh-keygen")
    assert key
    subprocess.run([key, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    path = write_authorized_key(tmp_path / "keys", account, (tmp_path / "id.pub").read_text())
    assert path.name == "edu-school-1" and path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(SftpConfigError, match="OpenSSH public key"):
        write_authorized_key(tmp_path / "keys", account, "ssh-ed25519 AAAA\ncommand=evil ssh-rsa AAAA")
