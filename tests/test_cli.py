"""`edu-agent` dispatcher: help on every subcommand, --version, and the exit codes."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__, exitcodes
from agent.cli import build_parser, main
from tests.test_config import BASE, EXAMPLE, site, write  # noqa: F401 (site is a fixture)


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every registered (sub)command, e.g. ("config",), ("config", "check")."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_subcommand_paths(sub, (*prefix, name)))
    return paths


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == exitcodes.OK
    assert capsys.readouterr().out.strip() == f"edu-agent {__version__}"


def test_help_lists_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "78 configuration error" in out and "config" in out


def test_help_on_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    paths = _subcommand_paths(build_parser())
    assert ("config", "check") in paths
    for path in paths:
        assert main([*path, "--help"]) == exitcodes.OK, path
        assert "usage: edu-agent " + " ".join(path) in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [[], ["no-such-command"], ["config"], ["config", "check", "--no-such-option"], ["--log-level", "loud"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == exitcodes.USAGE
    assert "usage:" in capsys.readouterr().err


def test_config_check_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "-c", str(EXAMPLE)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert out.startswith(f"{EXAMPLE}: valid")
    assert "database       main: postgresql, password from systemd credential db-main" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("  poll_interval: 30s", "  pol_interval: 30s"), ":11 platform.pol_interval: unknown key"),
        (("poll_interval: 30s", "poll_interval: 30 secs"), ":11 platform.poll_interval: expected a duration"),
        (
            ("identity_file: id_ed25519", "identity_file: id_missing"),
            ":9 platform.identity_file: file not found",
        ),
        (
            ("main: sqlite:///main.db", "main: mysql+pymysql://root:hunter2@127.0.0.1/test"),
            ":14 targets.databases.main: inline password",
        ),
    ],
    ids=["typo", "duration", "missing-file", "inline-password"],
)
def test_config_errors_exit_78_naming_file_line_and_key(
    site: Path,  # noqa: F811
    change: tuple[str, str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(site, BASE.replace(*change))
    assert main(["config", "check", "-c", str(path)]) == exitcodes.CONFIG
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"{path}: 1 error"
    assert lines[1].startswith(f"  {path}{expected}")
    assert len(lines) == 2
    assert "hunter2" not in captured.err


def test_unexpected_exception_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.commands import config_cmd

    def explode(args: argparse.Namespace) -> int:
        raise RuntimeError("boom with password=hunter2")

    monkeypatch.setattr(config_cmd, "run_check", explode)
    assert main(["--log-format", "json", "config", "check", "-c", str(EXAMPLE)]) == exitcodes.FAILURE
    err = capsys.readouterr().err
    assert '"event": "command.failed"' in err and "RuntimeError: boom" in err
    assert "hunter2" not in err


def test_console_script_entry_point() -> None:
    """The installed ``edu-agent`` script runs and exits with main()'s code."""
    script = Path(sys.executable).parent / "edu-agent"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
    result = subprocess.run(
        [*command, "config", "check", "-c", "/nonexistent/config.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == exitcodes.CONFIG
    assert "/nonexistent/config.yaml: cannot read the config file" in result.stderr
