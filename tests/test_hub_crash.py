"""A publish killed (SIGKILL) at random points leaves no partial or duplicate package."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.test_hub_common import HubFixture, ReplayAgent, source_state, staff_table, subscription_text

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_publish_killed_at_random_points(tmp_path: Path, db_url: str) -> None:
    rng = random.Random(4)
    rounds = 12 if db_url.startswith("sqlite") else 6
    engine = sa.create_engine(db_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1", "school-2"])
    hub.add_subscription(subscription_text(db_url, agents=("school-1", "school-2")))
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "ID": i,
                    "XM": f"教师{i}",
                    "SECRET": "x",
                    "STATUS": "active",
                    "UPDATETIME": "2026-01-01 00:00:00",
                }
                for i in range(1, 3001)
            ],
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = 0
    for run in range(rounds):
        with engine.begin() as conn:  # a change per round: updates, inserts, deletes
            stamp = f"2026-02-{run + 1:02d} 00:00:00"
            ids = rng.sample(range(1, 3000), 40)
            conn.execute(
                table.update().where(table.c.ID.in_(ids[:30])).values(XM=f"第{run}轮", UPDATETIME=stamp)
            )
            conn.execute(table.delete().where(table.c.ID.in_(ids[30:])))
            conn.execute(
                table.insert(),
                [
                    {
                        "ID": 10000 + run * 10 + j,
                        "XM": "新",
                        "SECRET": "x",
                        "STATUS": "active",
                        "UPDATETIME": stamp,
                    }
                    for j in range(5)
                ],
            )
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "publish", str(hub.root)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        for agent in ("school-1", "school-2"):  # never a partial file under a package name
            for name in os.listdir(hub.inbox(agent)):
                assert not name.startswith("."), f"temporary file visible in the inbox: {name}"
    assert killed >= 2, "the kill points never hit a running publish; make the table bigger"
    hub.publish()  # the re-run completes whatever was interrupted
    for agent in ("school-1", "school-2"):
        replay = ReplayAgent(hub, agent)
        replay.catch_up()  # asserts contiguous sequences, signed digests equal to the replayed state
        assert replay.table() == source_state(db_url)
    leftovers = [n for n in os.listdir(hub.root / "spool")]
    assert leftovers == [], leftovers
    engine.dispose()
