"""Serve the exchange directory to agents over OpenSSH's internal SFTP server.

One system user per agent (``edu-<agent id>``), each chrooted to its own exchange directory
``<exchange>/<agent id>``. sshd's chroot rules decide the ownership: the chroot directory and
every parent must be root-owned and not group/other-writable, so the writable parts are
subdirectories — ``inbox/`` and ``control/`` written by the hub and only read by the agent,
``outbox/`` written by the agent and read (and archived) by the hub.

The test suite's sshd fixture renders its configuration with :func:`render_sshd_config`, so the
tests run exactly the block ``docs/hub.md`` shows. Note that sshd checks *every* component of the
chroot path: an exchange directory under ``/tmp`` (mode 1777) can never be a chroot — tests must
place it under a root-owned 0755 directory (see :func:`check_chroot_parents`).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

USER_PREFIX = "edu-"
HUB_USER = "edu-hub"
AGENT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,27}$")
# Linux user names are at most 32 characters; "edu-" + 28 leaves room.

INBOX, OUTBOX, CONTROL = "inbox", "outbox", "control"
_PUBLIC_KEY_LINE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( \S.*)?$")


class SftpConfigError(ValueError):
    """An agent id, path or user that cannot be served safely."""


def check_agent_id(agent_id: str) -> str:
    """Agent ids become system user names and directory names: keep them boring."""
    if not AGENT_ID_PATTERN.fullmatch(agent_id):
        raise SftpConfigError(
            f"agent id {agent_id!r} is not usable as a system user: "
            "use 1-28 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
        )
    return agent_id


def system_user(agent_id: str) -> str:
    """The system user an agent logs in as: ``edu-<agent id>``."""
    return USER_PREFIX + check_agent_id(agent_id)


@dataclass(frozen=True)
class SftpAccount:
    """One agent's login: its system user and the directory it is chrooted to."""

    agent_id: str
    user: str
    chroot: Path

    @classmethod
    def for_agent(cls, exchange_dir: Path, agent_id: str, user: str | None = None) -> SftpAccount:
        check_agent_id(agent_id)
        return cls(agent_id, user or system_user(agent_id), Path(exchange_dir).absolute() / agent_id)


def _config_value(value: str | Path, what: str) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in "\"'#%\\" or ord(c) < 32 for c in text):
        raise SftpConfigError(f"{what} {text!r} cannot be written into sshd_config safely")
    return text


def render_match_block(account: SftpAccount, authorized_keys_dir: Path) -> str:
    """The ``Match User`` block for one agent.

    The authorized keys live outside the chroot in a root-owned directory, one file per user
    (``%u`` expands to the user name), so an agent cannot add keys for itself.
    """
    user = _config_value(account.user, "user name")
    chroot = _config_value(account.chroot, "chroot directory")
    keys = _config_value(Path(authorized_keys_dir).absolute(), "authorized keys directory")
    return "\n".join(
        [
            f"Match User {user}",
            f"    ChrootDirectory {chroot}",
            "    ForceCommand internal-sftp -u 0027",
            f"    AuthorizedKeysFile {keys}/%u",
            "    AuthenticationMethods publickey",
            "    PubkeyAuthentication yes",
            "    PasswordAuthentication no",
            "    KbdInteractiveAuthentication no",
            "    DisableForwarding yes",
            "    AllowTcpForwarding no",
            "    AllowAgentForwarding no",
            "    AllowStreamLocalForwarding no",
            "    X11Forwarding no",
            "    PermitTTY no",
            "    PermitTunnel no",
            "    PermitUserRC no",
            "",
        ]
    )


def render_sshd_config(
    accounts: Iterable[SftpAccount],
    authorized_keys_dir: Path,
    *,
    listen_address: str | None = None,
    port: int | None = None,
    host_keys: Sequence[Path] = (),
    pid_file: Path | None = None,
) -> str:
    """A complete sshd_config fragment: global SFTP subsystem, then one Match block per agent.

    On a production host the global options (address, port, host keys, pid file) come from the
    system's sshd_config and are left out; a test sshd passes them in.
    """
    lines: list[str] = []
    if listen_address is not None:
        lines.append(f"ListenAddress {_config_value(listen_address, 'listen address')}")
    if port is not None:
        lines.append(f"Port {int(port)}")
    lines.extend(f"HostKey {_config_value(Path(k).absolute(), 'host key')}" for k in host_keys)
    if pid_file is not None:
        lines.append(f"PidFile {_config_value(Path(pid_file).absolute(), 'pid file')}")
    lines += [
        "Subsystem sftp internal-sftp",
        "PermitRootLogin no",
        "StrictModes yes",
        "",
    ]
    blocks = [render_match_block(a, authorized_keys_dir) for a in accounts]
    return "\n".join(lines) + "\n".join(blocks)


@dataclass(frozen=True)
class PathSpec:
    """Owner, group and mode one exchange path must have for chroot to work."""

    path: Path
    owner: str
    group: str
    mode: int


def chroot_layout(
    account: SftpAccount, hub_user: str = HUB_USER, hub_group: str | None = None
) -> list[PathSpec]:
    """Ownership and modes of one agent's exchange directory.

    - the chroot directory itself: ``root:root 0755`` (sshd refuses anything writable by others);
    - ``inbox/``, ``control/``: owned by the hub, group = the agent's user, ``2750`` — the agent
      reads, cannot write or delete; setgid so files the hub writes inherit the agent's group;
    - ``outbox/``: owned by the agent's user, group = the hub, ``2770`` — the agent uploads
      (temp name + rename), the hub reads and archives what it has processed.
    """
    hub_group = hub_group or hub_user
    chroot = account.chroot
    return [
        PathSpec(chroot, "root", "root", 0o755),
        PathSpec(chroot / INBOX, hub_user, account.user, 0o2750),
        PathSpec(chroot / CONTROL, hub_user, account.user, 0o2750),
        PathSpec(chroot / OUTBOX, account.user, hub_group, 0o2770),
    ]


def check_chroot_parents(path: Path) -> None:
    """sshd requires every component of the chroot path to be root-owned and not writable by others."""
    for part in [path.absolute(), *path.absolute().parents]:
        st = part.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise SftpConfigError(
                f"{part} must be owned by root and not group/other-writable to be (part of) a chroot "
                f"(owner uid {st.st_uid}, mode {oct(st.st_mode & 0o7777)})"
            )


def apply_layout(specs: Iterable[PathSpec]) -> None:
    """Create the directories and set owner, group and mode (needs root)."""
    for spec in specs:
        spec.path.mkdir(parents=True, exist_ok=True)
        try:
            uid = pwd.getpwnam(spec.owner).pw_uid
            gid = grp.getgrnam(spec.group).gr_gid
        except KeyError as exc:
            raise SftpConfigError(f"{spec.path}: no such user or group {exc.args[0]!r}") from exc
        os.chown(spec.path, uid, gid, follow_symlinks=False)
        os.chmod(spec.path, spec.mode)


def useradd_command(account: SftpAccount) -> list[str]:
    """The command that creates an agent's system user: no home, no shell, no password.

    The password field is ``*`` (no password) rather than useradd's default ``!`` (locked):
    with ``UsePAM no`` sshd refuses even key logins for a locked account.
    """
    return [
        "useradd",
        "--system",
        "--password",
        "*",
        "--no-create-home",
        "--home-dir",
        "/",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
        account.user,
    ]


def write_authorized_key(authorized_keys_dir: Path, account: SftpAccount, public_key: str) -> Path:
    """Install the agent's SSH public key as ``<dir>/<user>`` (root-owned, 0644, dir 0755)."""
    key = public_key.strip()
    if "\n" in key or not _PUBLIC_KEY_LINE.match(key):
        raise SftpConfigError(f"agent {account.agent_id}: not a single OpenSSH public key line")
    authorized_keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(authorized_keys_dir, 0o755)  # noqa: S103 - sshd StrictModes: root-owned, world-readable
    target = authorized_keys_dir / account.user
    tmp = target.with_name(f".{account.user}.tmp")
    tmp.write_text(key + "\n", encoding="ascii")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
