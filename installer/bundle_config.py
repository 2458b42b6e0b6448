"""Helpers install.sh runs with the freshly installed venv's Python.

They read the config file leniently (plain YAML, defaults and path rules of agent/config.py)
because install.sh needs the agent id, the keys directory and the share paths *before* the
config is complete: a fresh install has no platform key yet, so `load_config` would refuse it.

    bundle_config.py paths CONFIG        shell assignments: agent_id, keys_dir, state_dir, ...
    bundle_config.py dropin CONFIG       a systemd drop-in granting write access to the shares
    bundle_config.py ssh-key FILE NAME   create an Ed25519 OpenSSH identity (FILE 0600, FILE.pub)
    bundle_config.py fresh-config EXAMPLE ROOT AGENT_ID [URL] [HOST_KEY]
                                         a new config.yaml (stdout) from config.example.yaml
    bundle_config.py compat VERSION      the drop-in older systemd needs (empty: none)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULTS = {"state_dir": "/var/lib/edu-agent", "keys_dir": "/etc/edu-agent/keys"}


def _section(data: Any, name: str) -> dict[str, Any]:
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def _path(base: Path, value: Any) -> str:
    """A path as agent/config.py resolves it: relative to the config file's directory."""
    if not isinstance(value, str) or not value:
        return ""
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def read(config: Path) -> dict[str, Any]:
    with config.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    base = config.absolute().parent
    agent, platform = _section(data, "agent"), _section(data, "platform")
    shares = _section(_section(data, "targets"), "shares")
    share_dirs = []
    for share in shares.values():
        if isinstance(share, dict):
            share_dirs += [_path(base, share.get("path")), _path(base, share.get("verified_cache"))]
    agent_id = agent.get("id")
    return {
        "agent_id": str(agent_id) if agent_id is not None else "",
        "keys_dir": _path(base, agent.get("keys_dir", DEFAULTS["keys_dir"])),
        "state_dir": _path(base, agent.get("state_dir", DEFAULTS["state_dir"])),
        "transport": str(platform.get("transport", "")),
        "identity_file": _path(base, platform.get("identity_file")),
        "public_keys": _path(base, platform.get("public_keys")),
        "share_dirs": [d for d in share_dirs if d],
    }


def paths(config: Path) -> str:
    values = read(config)
    lines = [f"{key}={shlex.quote(str(value))}" for key, value in values.items() if key != "share_dirs"]
    lines.append("share_dirs=" + shlex.quote("\n".join(values["share_dirs"])))
    return "\n".join(lines) + "\n"


def dropin(config: Path) -> str:
    """ReadWritePaths= for every share (ProtectSystem=strict makes the rest read-only).

    The "-" prefix keeps the service starting while a share directory does not exist yet;
    systemd-escaping of spaces is done by quoting each path.
    """
    dirs = read(config)["share_dirs"]
    lines = [
        "# Written by edu-agent's install.sh from the share targets of " + str(config) + ".",
        "# Rewritten on every install/upgrade; put your own changes in another drop-in file.",
        "[Service]",
    ]
    lines += [f'ReadWritePaths="-{d}"' for d in dirs]
    return "\n".join(lines) + "\n"


def ssh_key(path: Path, comment: str) -> None:
    """A new Ed25519 SSH identity; refuses to overwrite one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(private)
    Path(f"{path}.pub").write_bytes(public + b" " + comment.encode() + b"\n")


# Where a fresh install keeps what the example config points into examples/ for illustration.
IDENTITY_FILE = "/etc/edu-agent/keys/ssh_ed25519"
PLATFORM_KEYS = "/etc/edu-agent/platform-keys.json"
# Absolute paths of the example that move under --root.
ROOTED_PREFIXES = ("/etc/edu-agent", "/var/lib/edu-agent", "/var/log/edu-agent", "/srv/")


def _set_key(lines: list[str], section: str, key: str, value: str) -> None:
    """Replace ``key``'s value inside top-level ``section``, keeping every comment."""
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"{section}:"), None)
    if start is None:
        raise SystemExit(f"config.example.yaml has no section {section!r}")
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line and not line[0].isspace() and not line.startswith("#"):
            break
        match = re.match(rf"^(\s+){re.escape(key)}:(\s|$)", line)
        if match:
            lines[i] = f"{match.group(1)}{key}: {value}"
            return
    raise SystemExit(f"config.example.yaml has no key {section}.{key}")


def fresh_config(example: Path, root: str, agent_id: str, url: str = "", host_key: str = "") -> str:
    """This machine's first config: the example with its own id, key paths and (under --root)
    paths moved into ROOT. The platform's host key stays unset until enrollment unless given."""
    text = example.read_text(encoding="utf-8")
    lines = text.split("\n")
    old_id = str(_section(yaml.safe_load(text), "agent").get("id", ""))
    quote = json.dumps  # JSON strings are valid YAML scalars
    _set_key(lines, "agent", "id", quote(agent_id))
    platform = _section(yaml.safe_load(text), "platform")
    new_url = url or str(platform.get("url", "")).replace(old_id, agent_id)
    _set_key(lines, "platform", "url", quote(new_url))
    _set_key(lines, "platform", "host_key", quote(host_key) if host_key else "null  # set at enrollment")
    _set_key(lines, "platform", "identity_file", IDENTITY_FILE)
    _set_key(lines, "platform", "public_keys", PLATFORM_KEYS)
    text = "\n".join(lines)
    # The unit loads /etc/edu-agent/credentials/ as a directory: file NAME is the credential
    # "edu-agent_NAME" (LoadCredential=edu-agent:/etc/edu-agent/credentials).
    credential = re.compile(r"^(\s*#?\s*\w+_credential:\s*)(?!edu-agent_)([A-Za-z0-9][\w.-]*)", re.M)
    text = credential.sub(r"\1edu-agent_\2", text)
    if root not in ("", "/"):
        for prefix in ROOTED_PREFIXES:
            text = text.replace(prefix, root.rstrip("/") + prefix)
    return text


def compat(systemd_version: int) -> str:
    """Reset the two settings that would break the start on older systemd (docs/operations.md,
    "systemd versions"); everything else unknown to it is ignored with a warning."""
    lines = []
    if systemd_version < 239:
        lines += [
            "# @system-service is unknown before systemd 239: an allow-list without it kills the agent.",
            "SystemCallFilter=",
        ]
    if 247 <= systemd_version < 251:
        lines += [
            "# LoadCredential= cannot load a directory before systemd 251: list each file instead, e.g.",
            "#   LoadCredential=edu-agent_db-main:/etc/edu-agent/credentials/db-main",
            "LoadCredential=",
        ]
    if not lines:
        return ""
    header = [f"# Written by install.sh for systemd {systemd_version} (docs/operations.md).", "[Service]"]
    return "\n".join(header + lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "paths":
        sys.stdout.write(paths(Path(argv[1])))
    elif len(argv) == 2 and argv[0] == "dropin":
        sys.stdout.write(dropin(Path(argv[1])))
    elif 4 <= len(argv) <= 6 and argv[0] == "fresh-config":
        sys.stdout.write(fresh_config(Path(argv[1]), *argv[2:]))
    elif len(argv) == 2 and argv[0] == "compat":
        sys.stdout.write(compat(int(argv[1])))
    elif len(argv) == 3 and argv[0] == "ssh-key":
        ssh_key(Path(argv[1]), argv[2])
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
