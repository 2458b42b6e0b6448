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
import sqlalchemy as sa

from connectors.stores.tables import TableStore, rowcheck
from connectors.stores.tables.dialects.postgresql import PostgreSQLDialect
from tests.tables_helpers import Source, staff_row, stream, table_contents

RUNS = 50
RUNS_WITH_WORKERS = 12
TABLE = "crash_staff"
WORKER_MARK = "EDU_TEST_CRASH_APPLIER"


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


def _child(url: str, packages: list[tuple[object, bytes]], workers: bool = False) -> None:
    """Runs in the forked child: apply everything from the current position on, then exit.
    Tasks are tiny, so every package's rows are checked beside the load: in threads running
    the C checks, or with ``workers`` in a pool of worker processes of the child's own
    running the Python checks (forced: this schema would take the C checks)."""
    try:
        rowcheck.TASK_ROWS = 40
        os.environ["EDU_SYNC_CHECK_WORKERS"] = "2"
        if workers:
            rowcheck._pool, rowcheck._pool_off = None, None  # the parent's pool does not survive fork
            rowcheck.FastRows.for_columns = classmethod(lambda cls, columns: None)  # type: ignore[method-assign,assignment]
            PostgreSQLDialect.canonical_select = lambda self, columns, alias: None  # type: ignore[method-assign]
            os.environ[WORKER_MARK] = str(os.getpid())  # inherited by the workers it spawns
        store = TableStore(url)
        for header, payload in packages:
            store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
        os._exit(0)
    except BaseException:  # pragma: no cover - reported through the exit status
        import traceback

        traceback.print_exc()
        os._exit(3)


CHILD_APP = "edu_crash_child"


def _child_url(url: str) -> str:
    """PostgreSQL sessions of the child are tagged so that the parent can wait for them."""
    if url.startswith("postgresql"):
        return (
            sa.make_url(url)
            .update_query_dict({"application_name": CHILD_APP})
            .render_as_string(hide_password=False)
        )
    return url


def _wait_for_orphaned_sessions(url: str) -> None:
    """A killed client's server session may still be finishing its statement (even COMMIT):
    wait until it is gone, so that the check reads a settled database."""
    if url.startswith("sqlite"):
        return
    engine = sa.create_engine(url)
    query = (
        f"SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{CHILD_APP}'"
        if url.startswith("postgresql")
        else "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
        "WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if not conn.exec_driver_sql(query).scalar():
                    return
            time.sleep(0.02)
        raise AssertionError("the killed child's database session did not end")
    finally:
        engine.dispose()


def _workers_of(child: int) -> list[int]:
    """Live processes carrying the child's worker mark (its row-check workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if f"{WORKER_MARK}={child}".encode() in environ.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _wait_for_workers_to_exit(child: int) -> None:
    deadline = time.monotonic() + 10
    while _workers_of(child):
        assert time.monotonic() < deadline, "row-check workers outlived the killed applier"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_at_random_points_never_loses_or_duplicates(db_url: str) -> None:
    _kill_loop(db_url, RUNS, workers=False)


@pytest.mark.slow
def test_sigkill_with_row_check_workers(db_url: str) -> None:
    """The same with every package checked in worker processes: killing the applier mid-way
    loses and duplicates nothing, and its workers leave with it."""
    _kill_loop(db_url, RUNS_WITH_WORKERS, workers=True)


def _kill_loop(db_url: str, runs: int, *, workers: bool) -> None:
    packages, states = _packages(seed=hash(db_url) & 0xFFFF)
    schema = packages[0][0].schema  # type: ignore[attr-defined]
    rng = random.Random(7)
    killed_mid_stream = killed_with_workers = 0
    window, sequence = (1.5 if workers else 0.45), 0  # kill window, adapted: a run spans 1-3 packages
    for run in range(runs):
        before = sequence
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            _child(_child_url(db_url), packages, workers)
        time.sleep(rng.uniform(0.03, window))
        if workers and _workers_of(pid):
            killed_with_workers += 1
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            killed_mid_stream += 1
        else:
            assert os.WEXITSTATUS(status) == 0, f"child failed in run {run}"
        if workers:
            _wait_for_workers_to_exit(pid)
        _wait_for_orphaned_sessions(db_url)
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
        if not os.WIFSIGNALED(status) or sequence - before > 3:
            window = max(0.05, window * 0.6)
        elif sequence == before:
            window = min(3.0, window * 1.15)
    assert killed_mid_stream >= runs * 0.8, "too few kills landed while packages were being applied"
    if workers:
        assert killed_with_workers >= runs // 2, f"only {killed_with_workers} kills found workers running"
    store = TableStore(db_url)
    try:
        for header, payload in packages:
            store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
        assert store.position(packages[0][0].subscription).sequence == len(packages)  # type: ignore[attr-defined,union-attr]
        assert store.verify(packages[0][0].subscription).match  # type: ignore[attr-defined]
    finally:
        store.close()
    assert table_contents(db_url, TABLE, schema) == states[-1]
