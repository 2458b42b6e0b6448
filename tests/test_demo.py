"""`edu-agent demo` — the README's first command — as a fresh process, as `make demo` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = _agent("demo", "--dir", str(work), "--rows", "400")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "demo succeeded" in out
    assert "independent comparison" in out and "identical; files identical" in out
    assert out.count("digest matches the platform's") == 4  # two subscriptions, after each apply
    for step in ("publish a snapshot", "the source changes", "edu-hub reports", "where to look"):
        assert step in out
    status = _agent("status", "-c", str(work / "agent" / "config.yaml"), "--json")
    assert status.returncode == 0, status.stderr
    subs = {s["subscription_id"]: s for s in json.loads(status.stdout)["subscriptions"]}
    assert subs["staff-basic"]["applied_sequence"] == 2 and subs["staff-basic"]["digest_match"] is True
    assert subs["course-files"]["applied_sequence"] == 2 and subs["course-files"]["digest_match"] is True
    audit = _agent("audit", "verify", "-c", str(work / "agent" / "config.yaml"))
    assert audit.returncode == 0 and "intact" in audit.stdout


def test_demo_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    done = _agent("demo", "--dir", str(tmp_path))
    assert done.returncode == 2
    assert "not empty" in done.stdout
