"""SIGKILL during apply, then restart: the directory is always the old set or the new one.

A forked child applies a delta (changes, additions, removals, new and emptied
directories). It is killed either at a chosen step — before or after each write,
rename, unlink, mkdir, rmdir, fsync, syncfs and state transaction, so every phase
is hit — or after a random delay. The parent then restarts the store
(``recover``) and checks that the visible tree equals exactly the old or the new
file set (no mix, no partial file), that the recorded position agrees with it,
and that applying again completes the new set.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.stores.shares import fsops, state
from connectors.stores.shares.store import ShareStore
from tests.test_shares_support import files_package, tree

OLD = {f"keep/{i:02d}.txt": f"keep {i}".encode() * 50 for i in range(6)}
OLD.update({f"change/{i:02d}.bin": bytes([i]) * 3000 for i in range(6)})
OLD.update({f"gone/{i:02d}.txt": b"old" * i for i in range(5)})
NEW = {p: b for p, b in OLD.items() if not p.startswith("gone/")}
NEW.update({f"change/{i:02d}.bin": bytes([i + 100]) * 2000 for i in range(6)})
NEW.update({f"fresh/sub/{i:02d}.dat": f"fresh {i}".encode() * 300 for i in range(6)})
NEW_PACKAGE = files_package(NEW, OLD, sequence=2)


def _instrument(kill_at: int, counter: list[int]) -> None:
    """In the child: count steps around every durable operation; SIGKILL at ``kill_at``."""

    def step() -> None:
        counter[0] += 1
        if counter[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner: Any, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            step()
            result = original(*args, **kwargs)
            step()
            return result

        setattr(owner, name, wrapped)

    for name in ("write", "rename", "unlink", "rmdir", "mkdir", "fsync"):
        wrap(os, name)
    wrap(fsops, "syncfs")
    wrap(state._Transaction, "__exit__")


def _fork_apply(share: Path, kill_at: int, durability: str = "auto") -> tuple[int, int]:
    """(pid, read end of a pipe that gets the step count if the child finishes)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            counter = [0]
            _instrument(kill_at, counter)
            header, payload = NEW_PACKAGE
            ShareStore(share, space_margin=0, durability=durability).apply(header, [payload], "sub")
            os.write(write_end, str(counter[0]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _fresh_share(root: Path) -> Path:
    share = root / "share"
    share.mkdir(parents=True)
    header, payload = files_package(OLD, sequence=1)
    ShareStore(share, space_margin=0).apply(header, [payload], "sub")
    assert tree(share / "sub") == OLD
    return share


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
        diff = sorted(set(visible) ^ set(OLD)), sorted(set(visible) ^ set(NEW))
        raise AssertionError(f"mixed or partial file set after the crash: {diff}")
    assert store.verify("sub").match
    header, payload = NEW_PACKAGE
    store.apply(header, [payload], "sub")
    assert tree(share / "sub") == NEW
    assert not list((share / "sub" / ".edu-sync" / "staging").iterdir())
    return outcome


def _probe(tmp_path: Path, durability: str = "auto") -> tuple[int, float]:
    """Total steps and duration of an uninterrupted apply."""
    share = _fresh_share(tmp_path / f"probe-{durability}")
    started = time.monotonic()
    pid, pipe = _fork_apply(share, 0, durability)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    steps = os.read(pipe, 64)
    os.close(pipe)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tree(share / "sub") == NEW
    return int(steps), elapsed


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["auto", "syncfs"])  # per-file fsync (few files) / one syncfs
def test_sigkill_at_every_phase_leaves_old_or_new_set(tmp_path: Path, durability: str) -> None:
    total, _ = _probe(tmp_path, durability)
    rng = random.Random(6)
    points = sorted(set(rng.sample(range(1, total + 1), k=min(total, 32))) | {1, total // 2, total})
    outcomes = []
    for run, kill_at in enumerate(points):
        share = _fresh_share(tmp_path / f"step{run}")
        pid, pipe = _fork_apply(share, kill_at, durability)
        _, status = os.waitpid(pid, 0)
        os.close(pipe)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL, f"step {kill_at} of {total} not reached"
        outcomes.append(_check_after_restart(share))
    assert len(points) >= 30
    print(
        f"{durability}: {len(points)} kill points of {total} steps: "
        f"{outcomes.count('old')} old, {outcomes.count('new')} new"
    )
    assert {"old", "new"} <= set(outcomes), outcomes  # kills landed on both sides of the commit point


@pytest.mark.slow
def test_sigkill_after_random_delays_leaves_old_or_new_set(tmp_path: Path) -> None:
    _, elapsed = _probe(tmp_path)
    rng = random.Random(66)
    outcomes = []
    for run in range(30):
        share = _fresh_share(tmp_path / f"rand{run}")
        pid, pipe = _fork_apply(share, 0)
        time.sleep(rng.uniform(0, elapsed * 1.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(pipe)
        outcomes.append(_check_after_restart(share))
    assert len(outcomes) == 30
    print(f"random-delay kills: {outcomes.count('old')} left the old set, {outcomes.count('new')} the new")
