"""The sample configs in tests/configs/: each broken one fails `config check` with exactly the
error its first line announces (file:line key.path: message); valid.yaml passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import exitcodes
from agent.cli import main

CONFIGS = sorted((Path(__file__).parent / "configs").glob("*.yaml"))


def test_there_are_samples() -> None:
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_sample(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = path.read_text().splitlines()[0]
    code = main(["config", "check", "-c", str(path)])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    if first == "# expect-ok":
        assert code == exitcodes.OK, err
        return
    expected = first.removeprefix("# expect: ")
    assert code == exitcodes.CONFIG
    assert len(err) == 2 and err[0] == f"{path}: 1 error", err
    if expected.endswith(": "):  # the message goes on with a machine-specific path
        assert err[1].startswith(f"  {path}{expected}"), err
    else:
        assert err[1] == f"  {path}{expected}", err
