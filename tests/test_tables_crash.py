"""Exactly once under SIGKILL: a forked child applies a stream of snapshots and deltas and is
killed at random points; after each kill the table must equal the source at the position
the store recorded (checked by an independent query), and in the end equal the source.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from connectors.stores.tables import TableStore
from tests.tables_helpers import Source, staff_row, stream, table_contents

RUNS = 50
TABLE = "crash_staff"


def _packages(seed: int) -> tuple[list[tuple[object, bytes]], list[set[str]]]:
    """A stream mixing snapshots and deltas, and the source state after each sequence."""
    rng = random.Random(seed)
    source = Source()
    packages: list[tuple[object, bytes]] = []
    states: list[set[str]] = [set()]
    next_key = 10000
    for n in range(1, 4 * RUNS + 1):
        if n == 1 or rng.random() < 0.25:
            header, payload = source.snapshot(
                [staff_row(i, n) for i in rng.sample(range(400), rng.randint(100, 300))]
            )
        else:
            keys = list(source.rows)
            updates = [
                staff_row(int(k[0][1:]), n) for k in rng.sample(keys, min(len(keys), rng.randint(20, 120)))
            ]
            chosen = {u[0] for u in updates}
            deletes = [k for k in rng.sample(keys, min(len(keys), rng.randint(0, 30))) if k[0] not in chosen]
            inserts = [staff_row(next_key + i, n) for i in range(rng.randint(0, 40))]
            next_key += len(inserts)
            header, payload = source.delta(upserts=updates + inserts, deletes=deletes)
        packages.append((header, payload))
        states.append(source.canonical_set())
    return packages, states


def _child(url: str, packages: list[tuple[object, bytes]]) -> None:
    """Runs in the forked child: apply everything from the current position on, then exit."""
    try:
        store = TableStore(url)
        for header, payload in packages:
            store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
        os._exit(0)
    except BaseException:  # pragma: no cover - reported through the exit status
        import traceback

        traceback.print_exc()
        os._exit(3)


@pytest.mark.slow
def test_sigkill_at_random_points_never_loses_or_duplicates(db_url: str) -> None:
    packages, states = _packages(seed=hash(db_url) & 0xFFFF)
    schema = packages[0][0].schema  # type: ignore[attr-defined]
    rng = random.Random(7)
    killed_mid_stream = 0
    for run in range(RUNS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            _child(db_url, packages)
        time.sleep(rng.uniform(0.03, 0.45))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            killed_mid_stream += 1
        else:
            assert os.WEXITSTATUS(status) == 0, f"child failed in run {run}"
        store = TableStore(db_url)
        try:
            store.recover()
            position = store.position(packages[0][0].subscription)  # type: ignore[attr-defined]
        finally:
            store.close()
        sequence = position.sequence if position is not None else 0
        contents = table_contents(db_url, TABLE, schema) if sequence else set()
        assert contents == states[sequence], (
            f"run {run}: table differs from the source at sequence {sequence}"
        )
    assert killed_mid_stream >= RUNS * 0.8, "too few kills landed while packages were being applied"
    store = TableStore(db_url)
    try:
        for header, payload in packages:
            store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
        assert store.position(packages[0][0].subscription).sequence == len(packages)  # type: ignore[attr-defined,union-attr]
        assert store.verify(packages[0][0].subscription).match  # type: ignore[attr-defined]
    finally:
        store.close()
    assert table_contents(db_url, TABLE, schema) == states[-1]
