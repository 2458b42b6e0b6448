"""SIGKILL during apply, then restart: the directory is always the old set or the new one.

A child process applies a delta (changes, additions, removals, new and emptied
directories). It is killed either at a chosen step — before or after each write,
rename, unlink, mkdir, rmdir, fsync, syncfs and state transaction, covering every
phase — or after a random delay. The parent then restarts the store (``recover``)
and checks the visible tree equals exactly the old or the new file set, that the
recorded position agrees with it, and that applying again completes the new set.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from connectors.stores.shares.store import ShareStore
from tests.test_shares_support import files_package, tree

REPO = Path(__file__).resolve().parent.parent

OLD = {f"keep/{i:02d}.txt": f"keep {i}".encode() * 50 for i in range(6)}
OLD.update({f"change/{i:02d}.bin": bytes([i]) * 3000 for i in range(6)})
OLD.update({f"gone/{i:02d}.txt": b"old" * i for i in range(5)})
NEW = {p: b for p, b in OLD.items() if not p.startswith("gone/")}
NEW.update({f"change/{i:02d}.bin": bytes([i + 100]) * 2000 for i in range(6)})
NEW.update({f"fresh/sub/{i:02d}.dat": f"fresh {i}".encode() * 300 for i in range(6)})

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    sys.path.insert(0, {repo!r})
    from connectors.stores.shares import fsops, state, store

    kill_at = int(sys.argv[1])
    count = [0]

    def step():
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name):
        original = getattr(owner, name)
        def wrapped(*args, **kwargs):
            step()
            result = original(*args, **kwargs)
            step()
            return result
        setattr(owner, name, wrapped)

    for name in ("write", "rename", "unlink", "rmdir", "mkdir", "fsync"):
        wrap(os, name)
    wrap(fsops, "syncfs")
    wrap(state._Transaction, "__exit__")
    header = json.loads(open(sys.argv[2], encoding="utf-8").read())
    payload = open(sys.argv[3], "rb").read()
    share = store.ShareStore(sys.argv[4], space_margin=0)
    print("ready", flush=True)
    started = time.monotonic()
    share.apply(header, [payload], "sub")
    print("steps", count[0], time.monotonic() - started, flush=True)
    """
)


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("crash")
    header, payload = files_package(NEW, OLD, sequence=2)
    (base / "child.py").write_text(CHILD.format(repo=str(REPO)))
    (base / "header.json").write_text(json.dumps(header))
    (base / "payload").write_bytes(payload)
    return {"script": base / "child.py", "header": base / "header.json", "payload": base / "payload"}


def _fresh_share(root: Path) -> Path:
    share = root / "share"
    share.mkdir(parents=True)
    header, payload = files_package(OLD, sequence=1)
    ShareStore(share, space_margin=0).apply(header, [payload], "sub")
    assert tree(share / "sub") == OLD
    return share


def _spawn(child: dict[str, Path], share: Path, kill_at: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(child["script"]),
            str(kill_at),
            str(child["header"]),
            str(child["payload"]),
            str(share),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_after_restart(share: Path) -> str:
    store = ShareStore(share, space_margin=0)
    store.recover()
    visible = tree(share / "sub")
    position = store.position("sub")
    assert position is not None
    if visible == OLD:
        outcome = "old"
        assert position.sequence == 1
    elif visible == NEW:
        outcome = "new"
        assert position.sequence == 2
    else:
        extra = sorted(set(visible) ^ set(OLD)), sorted(set(visible) ^ set(NEW))
        raise AssertionError(f"mixed or partial file set after crash: {extra}")
    assert store.verify("sub").match
    return outcome


def _complete(child: dict[str, Path], share: Path) -> None:
    header = json.loads(child["header"].read_text())
    ShareStore(share, space_margin=0).apply(header, [child["payload"].read_bytes()], "sub")
    assert tree(share / "sub") == NEW
    assert not list((share / "sub" / ".edu-sync" / "staging").iterdir())


def _total_steps(child: dict[str, Path], tmp_path: Path) -> tuple[int, float]:
    share = _fresh_share(tmp_path / "probe")
    proc = _spawn(child, share, 0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    _, steps, elapsed = out.split("\n")[1].split()
    assert tree(share / "sub") == NEW
    return int(steps), float(elapsed)


@pytest.mark.slow
def test_sigkill_at_every_phase_leaves_old_or_new_set(child: dict[str, Path], tmp_path: Path) -> None:
    total, _ = _total_steps(child, tmp_path)
    rng = random.Random(6)
    points = sorted(set(rng.sample(range(1, total + 1), k=min(total, 36))) | {1, total // 2, total})
    outcomes = []
    for run, kill_at in enumerate(points):
        share = _fresh_share(tmp_path / f"step{run}")
        proc = _spawn(child, share, kill_at)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"kill point {kill_at} of {total} was not reached"
        outcomes.append(_check_after_restart(share))
        _complete(child, share)
    assert len(points) >= 30
    assert {"old", "new"} <= set(outcomes), outcomes  # both sides of the commit point were hit


@pytest.mark.slow
def test_sigkill_after_random_delays_leaves_old_or_new_set(child: dict[str, Path], tmp_path: Path) -> None:
    _, elapsed = _total_steps(child, tmp_path)
    rng = random.Random(66)
    outcomes = []
    for run in range(30):
        share = _fresh_share(tmp_path / f"rand{run}")
        proc = _spawn(child, share, -1)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, elapsed * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
        outcomes.append(_check_after_restart(share))
        _complete(child, share)
    assert len(outcomes) == 30
