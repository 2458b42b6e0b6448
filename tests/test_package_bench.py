"""bench/package.py keeps working at a small size and ends with one JSON line (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_small_and_prints_one_json_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "package.py"), "--size-mib", "4", "--block-mib", "2",
         "--rounds", "1", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "protocol.package" and result["size_mib"] == 4
    for key in ("write_mb_s", "baseline_write_mb_s", "read_mb_s", "baseline_read_mb_s", "ratio"):
        assert result[key] > 0, key
    assert result["compression_ratio"] > 1
    assert result["peak_rss_mb"] > 0
    assert any(line.startswith("write:") for line in lines)
    assert any(line.startswith("read:") for line in lines)
    assert list(tmp_path.iterdir()) == []  # the temp package is cleaned up
