"""The systemd unit and its snippets: systemd-analyze verify, the security exposure, and the
syntax of the sysusers.d/tmpfiles.d snippets (checked by the real systemd tools, offline)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edu-agent.service"
SYSUSERS = REPO / "systemd" / "sysusers.d" / "edu-agent.conf"
TMPFILES = REPO / "systemd" / "tmpfiles.d" / "edu-agent.conf"
INSTALLED_BINARY = "/opt/edu-agent/current/bin/edu-agent"
EXPOSURE_TARGET = 2.0


def systemd_tool(name: str) -> str:
    """The path of a systemd tool; its absence is a failure under CI, a skip elsewhere."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install systemd)"
        if os.environ.get("EDU_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def unit_with_existing_binary(tmp_path: Path) -> Path:
    """A copy of the unit whose commands point at an executable that exists here.

    `systemd-analyze verify` checks that ExecStart= binaries exist; the real one only exists
    after installation (test_install.py verifies the unit install.sh wrote, too).
    """
    stub = tmp_path / "bin" / "edu-agent"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / "edu-agent.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(stub)))
    return copy


def unit_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # verify reports unknown directives and bad values as warnings without failing: none allowed.
    assert result.stderr.strip() == "", result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The verify test above can fail: a typo'd directive and a missing binary are reported."""
    tool = systemd_tool("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHomme=yes"))
    result = subprocess.run([tool, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'ProtectHomme'" in result.stderr
    missing = tmp_path / "missing.service"
    missing.write_text(UNIT.read_text())
    if not Path(INSTALLED_BINARY).exists():
        result = subprocess.run([tool, "verify", str(missing)], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert "is not executable" in result.stderr


def security_exposure(tool: str, unit: Path) -> tuple[float, str]:
    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1)), output


def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-analyze")
    exposure, output = security_exposure(tool, unit_with_existing_binary(tmp_path))
    print(f"\nsystemd-analyze security --offline=true edu-agent.service: exposure {exposure}")
    print("\n".join(line for line in output.splitlines() if line.startswith("✗")))
    assert exposure <= EXPOSURE_TARGET, output


def test_exposure_measure_can_fail(tmp_path: Path) -> None:
    """Without its hardening the same unit scores far above the target."""
    tool = systemd_tool("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    bare = tmp_path / "bare.service"
    hardening = re.compile(r"(Protect|Private|Restrict|SystemCall|Capability|NoNew|Memory|Lock|ProcSubset)")
    kept = [line for line in unit.read_text().splitlines() if not hardening.match(line)]
    bare.write_text("\n".join(kept) + "\n")
    exposure, _ = security_exposure(tool, bare)
    assert exposure > 5.0


def test_unit_declares_what_the_daemon_and_operators_rely_on() -> None:
    d = unit_directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"]
    assert d["RestartPreventExitStatus"] == ["78"]
    assert d["User"] == ["edu-agent"] and "DynamicUser" not in d
    assert d["WatchdogSec"] and d["WatchdogSec"][0] not in ("", "0")
    assert d["ExecStartPre"] == [f"{INSTALLED_BINARY} config check -c /etc/edu-agent/config.yaml"]
    assert d["ExecReload"] == [
        f"{INSTALLED_BINARY} config check -c /etc/edu-agent/config.yaml",
        "/bin/kill -HUP $MAINPID",
    ]
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} run -c /etc/edu-agent/config.yaml"]
    for key in ("StateDirectory", "ConfigurationDirectory", "LogsDirectory"):
        assert d[key] == ["edu-agent"]
    assert d["LoadCredential"] == ["edu-agent:/etc/edu-agent/credentials"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["UMask"] == ["0027"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["SystemCallFilter"][0] == "@system-service"
    for key in (
        "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables",
        "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
        "ProtectHostname", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
        "LockPersonality", "MemoryDenyWriteExecute",
    ):  # fmt: skip
        assert d[key] == ["yes"], key


def test_sysusers_snippet_creates_the_system_user(tmp_path: Path) -> None:
    tool = systemd_tool("systemd-sysusers")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("root:x:0:0:root:/root:/bin/sh\n" if name == "passwd" else "")
    (root / "etc" / "group").write_text("root:x:0:\n")
    result = subprocess.run(
        [tool, f"--root={root}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    entry = next(
        line for line in (root / "etc" / "passwd").read_text().splitlines() if line.startswith("edu-agent:")
    )
    _name, _pw, uid, gid, _gecos, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and uid == gid  # a system user with its own group
    assert home == "/var/lib/edu-agent"
    assert shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert re.search(r"^edu-agent:x:\d+:$", (root / "etc" / "group").read_text(), re.M)


def test_tmpfiles_snippet_creates_directories_with_owner_and_mode(tmp_path: Path) -> None:
    sysusers = systemd_tool("systemd-sysusers")
    tmpfiles = systemd_tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    subprocess.run([sysusers, f"--root={root}", str(SYSUSERS)], check=True, capture_output=True, timeout=60)
    result = subprocess.run(
        [tmpfiles, "--create", f"--root={root}", str(TMPFILES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = {
        "etc/edu-agent": 0o750,
        "etc/edu-agent/keys": 0o700,
        "etc/edu-agent/credentials": 0o700,
        "var/lib/edu-agent": 0o750,
        "var/log/edu-agent": 0o750,
    }
    for rel, mode in expected.items():
        st = (root / rel).stat()
        assert st.st_mode & 0o7777 == mode, rel
    # Owners are looked up in the *host's* user database by systemd-tmpfiles --root, where
    # edu-agent may not exist, so only modes are asserted here; install.sh tests check owners.


def test_every_directive_of_the_unit_is_in_the_operations_guide() -> None:
    """docs/operations.md explains the unit: each directive it sets is named there (the
    systemd version table lists those newer than CentOS 7's 219)."""
    guide = (REPO / "docs" / "operations.md").read_text()
    basics = {"Description", "Documentation", "After", "Wants", "WantedBy", "ExecStart", "ExecStartPre",
              "ExecReload", "User", "Group", "WorkingDirectory"}  # fmt: skip
    missing = [key for key in unit_directives(UNIT.read_text()) if key not in basics and key not in guide]
    assert missing == []


def compat_dropin(version: int) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "installer" / "bundle_config.py"), "compat", str(version)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout


@pytest.mark.parametrize(
    ("version", "resets"),
    [(219, {"SystemCallFilter"}), (238, {"SystemCallFilter"}), (239, set()), (247, {"LoadCredential"}),
     (250, {"LoadCredential"}), (251, set()), (252, set())],
)  # fmt: skip
def test_compat_dropin_for_older_systemd(tmp_path: Path, version: int, resets: set[str]) -> None:
    """install.sh resets exactly the settings that would stop the agent from starting on that
    systemd; the unit with that drop-in still verifies."""
    text = compat_dropin(version)
    assert {k for k, v in unit_directives(text).items() if v == [""]} == resets
    if not resets:
        assert text == ""
        return
    tool = systemd_tool("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    unit.write_text(unit.read_text() + "\n" + text)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
