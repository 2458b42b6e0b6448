"""Memory stays bounded while writing and reading a >= 1 GiB payload.

Each side runs in its own subprocess and reports its peak RSS (VmHWM) above the RSS it
had just before touching the package.  The payload is generated on the fly and highly
compressible (a 1 MiB block of CSV-like rows with a varying counter), so the test moves
1 GiB of plaintext through zstd, AES-GCM and SHA-256 in a few seconds and a few MiB of disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GIB = 1 << 30
LIMIT_MIB = 64  # chunk buffers (2 x 1 MiB), zstd window (<= 2 MiB at level 3), read buffer, slack

SCRIPT = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from protocol.keys import PartyKeys
from protocol.package import PackageWriter, open_package

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

sender = PartyKeys.from_private_bytes("platform", bytes(range(32)), bytes(range(1, 33)))
agent = PartyKeys.from_private_bytes("school-1", bytes(range(2, 34)), bytes(range(3, 35)))
path = Path({path!r})
size = {size}
row = b'U,"%08d","\xe5\xad\xa6\xe7\x94\x9f","2026-01-01 08:00:00"\n'
block = b"".join(row % i for i in range(28000))[: 1 << 20]
mode = sys.argv[1]
baseline = rss_kib()
if mode == "write":
    with PackageWriter(path, kind="snapshot", sender=sender, recipient=agent.public_bundle(),
                       subscription="big", sequence=1) as writer:
        for _ in range(size // len(block)):
            writer.write(block)
    result = {{"plaintext": writer.plaintext_bytes, "file": path.stat().st_size}}
else:
    total = 0
    trusted = {{"platform": sender.public_bundle()}}
    with open_package(path, trusted_senders=trusted, recipient=agent) as package:
        for piece in package.iter_plaintext():
            start = total % len(block)
            if piece != (block[start:] + block[:start])[: len(piece)]:
                raise SystemExit("plaintext differs at byte %d" % total)
            total += len(piece)
    result = {{"plaintext": total, "declared": package.header.plaintext_bytes}}
result.update(baseline_kib=baseline, peak_kib=peak_kib())
print(json.dumps(result))
"""


def run(mode: str, path: Path) -> dict[str, int]:
    root = str(Path(__file__).resolve().parents[1])
    script = SCRIPT.format(root=root, path=str(path), size=GIB)
    done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_one_gib_payload_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.pkg"
    written = run("write", path)
    assert written["plaintext"] == GIB
    assert written["file"] < GIB // 20  # compressible data really was compressed
    assert (written["peak_kib"] - written["baseline_kib"]) / 1024 < LIMIT_MIB, written

    read = run("read", path)
    assert read["plaintext"] == read["declared"] == GIB
    assert (read["peak_kib"] - read["baseline_kib"]) / 1024 < LIMIT_MIB, read
    print(f"write: {written}, read: {read}")
