"""Property: after any sequence of source changes and publishes, replaying the packages gives the source.

Changes respect the cursor premise (every insert and update sets the cursor to the current
maximum or beyond — "equal to the maximum" is the case of rows sharing the last cursor value);
the cursor-less variant changes rows without touching the cursor at all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_hub_common import HubFixture, ReplayAgent, source_state, staff_table, subscription_text

KEYS = st.integers(min_value=1, max_value=2600)  # beyond RANGE_ROWS: range bisection is exercised
OP = st.one_of(
    st.tuples(st.just("upsert"), KEYS, st.sampled_from(["甲", "乙", "", "x,y", 'q"q', None]), st.booleans()),
    st.tuples(st.just("delete"), KEYS, st.just(None), st.just(False)),
    st.tuples(st.just("hide"), KEYS, st.just(None), st.booleans()),
)
ROUNDS = st.lists(st.lists(OP, max_size=25), min_size=1, max_size=4)


def _apply(conn: sa.Connection, table: sa.Table, op: tuple, clock: list[int], cursorless: bool) -> None:
    kind, key, name, same = op
    if not cursorless and not same:
        clock[0] += 1
    stamp = f"2026-01-01 {clock[0] // 3600:02d}:{clock[0] // 60 % 60:02d}:{clock[0] % 60:02d}"
    if cursorless:
        stamp = "1999-01-01 00:00:00"  # never moves
    values = {"XM": name, "UPDATETIME": stamp}
    if kind == "delete":
        conn.execute(table.delete().where(key == table.c.ID))
    elif kind == "hide":  # leaves (or re-enters) the filter
        conn.execute(
            table.update().where(key == table.c.ID).values(STATUS="active" if same else "gone", **values)
        )
    elif conn.execute(sa.select(table.c.ID).where(key == table.c.ID)).first():
        conn.execute(table.update().where(key == table.c.ID).values(**values))
    else:
        conn.execute(table.insert().values(ID=key, SECRET="s", STATUS="active", **values))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=ROUNDS, cursorless=st.booleans(), base=st.integers(min_value=0, max_value=2500))
def test_replay_equals_source(rounds: list[list[tuple]], cursorless: bool, base: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'src.db'}"
        engine = sa.create_engine(url)
        table = staff_table(sa.MetaData())
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            rows = [
                {
                    "ID": i,
                    "XM": f"n{i}",
                    "SECRET": "s",
                    "STATUS": "active",
                    "UPDATETIME": "2026-01-01 00:00:00",
                }
                for i in range(1, base + 1)
            ]
            if rows:
                conn.execute(table.insert(), rows)
        hub = HubFixture(root, ["school-1"])
        hub.add_subscription(subscription_text(url, extra="  cursor: null" if cursorless else ""))
        agent = ReplayAgent(hub, "school-1")
        hub.publish()
        clock = [0]
        for ops in rounds:
            with engine.begin() as conn:
                for op in ops:
                    _apply(conn, table, op, clock, cursorless)
            hub.publish()
            agent.catch_up()  # also checks every signed expected digest against the replayed state
            assert agent.table() == source_state(url)
        engine.dispose()
