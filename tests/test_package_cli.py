"""`edu-agent package inspect` against real key directories and real package files."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from agent.cli import main
from protocol.keys import init_keys
from tests.vectors.helpers import NOW, write_package


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    platform = init_keys(tmp_path / "platform", "platform")
    agent = init_keys(tmp_path / "agent", "school-1")
    init_keys(tmp_path / "other", "school-2")
    package = write_package(
        tmp_path,
        'U,"1","张三"\n'.encode() * 500,
        sender=platform,
        recipient=agent,
        created=NOW - timedelta(days=1),
        expires=NOW + timedelta(days=3650),
    )
    return {
        "pkg": package,
        "agent": tmp_path / "agent",
        "other": tmp_path / "other",
        "platform_bundle": tmp_path / "platform" / "bundle.json",
        "agent_bundle": tmp_path / "agent" / "bundle.json",
    }


def inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["package", "inspect", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def statuses(report: dict[str, object]) -> dict[str, str]:
    checks = report["checks"]
    assert isinstance(checks, dict)
    return {name: check["status"] for name, check in checks.items()}


def test_everything_checks_out_with_keys(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, report = inspect(
        capsys,
        str(setup["pkg"]),
        "--keys",
        str(setup["agent"]),
        "--sender-bundle",
        str(setup["platform_bundle"]),
    )
    assert code == 0
    assert set(statuses(report).values()) == {"ok"}
    assert report["header_verified"] is True
    header = report["header"]
    assert isinstance(header, dict) and header["subscription"] == "sub-1"
    size = len('U,"1","张三"\n'.encode()) * 500
    assert f"{size} plaintext bytes" in report["checks"]["chunks"]["detail"]  # type: ignore[index]


def test_human_output_names_each_check(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["package", "inspect", str(setup["pkg"]), "--keys", str(setup["agent"]), "--sender-bundle",
         str(setup["platform_bundle"])]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for name in ("signature", "recipient", "expiry", "suite", "payload", "chunks"):
        assert f"  {name:<10} OK" in out
    assert "header (verified)" in out and "result: OK" in out


def test_without_keys_chunks_are_skipped_but_the_rest_verifies(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = inspect(capsys, str(setup["pkg"]), "--sender-bundle", str(setup["platform_bundle"]))
    assert code == 0
    assert statuses(report) == {
        "signature": "ok",
        "recipient": "skipped",
        "expiry": "ok",
        "suite": "ok",
        "payload": "ok",
        "chunks": "skipped",
    }


def test_without_a_sender_bundle_nothing_is_verified(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = inspect(capsys, str(setup["pkg"]))
    assert code == 1
    assert statuses(report)["signature"] == "skipped"
    assert report["header_verified"] is False


def test_tampered_chunk_fails(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(setup["pkg"].read_bytes())
    data[-20] ^= 1
    setup["pkg"].write_bytes(bytes(data))
    code, report = inspect(
        capsys,
        str(setup["pkg"]),
        "--keys",
        str(setup["agent"]),
        "--sender-bundle",
        str(setup["platform_bundle"]),
    )
    assert code == 1
    assert statuses(report)["payload"] == "failed"
    assert "digest mismatch" in report["checks"]["payload"]["detail"]  # type: ignore[index]


def test_wrong_sender_bundle_fails_signature(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = inspect(capsys, str(setup["pkg"]), "--sender-bundle", str(setup["agent_bundle"]))
    assert code == 1
    assert statuses(report)["signature"] == "failed"
    assert report["header_verified"] is False


def test_other_recipient_fails_recipient_and_skips_chunks(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = inspect(
        capsys,
        str(setup["pkg"]),
        "--keys",
        str(setup["other"]),
        "--sender-bundle",
        str(setup["platform_bundle"]),
    )
    assert code == 1
    assert statuses(report)["recipient"] == "failed"
    assert statuses(report)["chunks"] == "skipped"


def test_expired_is_reported_with_the_other_checks(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = inspect(
        capsys,
        str(setup["pkg"]),
        "--keys",
        str(setup["agent"]),
        "--sender-bundle",
        str(setup["platform_bundle"]),
        "--now",
        "2099-01-01T00:00:00Z",
    )
    assert code == 1
    assert statuses(report) == {
        "signature": "ok",
        "recipient": "ok",
        "expiry": "failed",
        "suite": "ok",
        "payload": "ok",
        "chunks": "ok",
    }


def test_not_a_package(tmp_path: Path, setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pkg"
    junk.write_bytes(b"hello world, not a package")
    code, report = inspect(capsys, str(junk), "--sender-bundle", str(setup["platform_bundle"]))
    assert code == 1
    assert "package magic" in report["checks"]["signature"]["detail"]  # type: ignore[index]


def test_usage_errors(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["package", "inspect", str(setup["pkg"]), "--sender-bundle", "/nonexistent.json"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["package", "inspect", str(setup["pkg"]), "--now", "2026-01-01T00:00:00"]) == 2
    assert "time zone" in capsys.readouterr().err
    assert main(["package", "inspect", "/nonexistent.pkg"]) == 1
