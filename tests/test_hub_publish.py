"""Change capture and publishing against real SQLite, PostgreSQL and MariaDB sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.test_hub_common import HubFixture, ReplayAgent, source_state, staff_table, subscription_text


def _setup(tmp_path: Path, url: str) -> tuple[HubFixture, sa.Engine, sa.Table]:
    engine = sa.create_engine(url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(subscription_text(url))
    return hub, engine, table


def _row(i: int, when: str, status: str = "active", name: str | None = None) -> dict[str, object]:
    return {
        "ID": i,
        "XM": name if name is not None else f"教师{i}",
        "SECRET": f"SECRET-{i}-证件号",
        "STATUS": status,
        "UPDATETIME": when,
    }


def test_snapshot_then_deltas(tmp_path: Path, db_url: str) -> None:
    hub, engine, table = _setup(tmp_path, db_url)
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 21)])
        conn.execute(
            table.insert(), [_row(100, "2026-01-01 08:00:00", status="inactive", name="OUTSIDE-FILTER")]
        )
    hub.publish()
    assert agent.catch_up() == 1 and agent.headers[-1].kind == "snapshot"
    assert agent.table() == source_state(db_url)

    # inserts, updates, deletes; one row updated twice; a row leaving the filter
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-02 09:00:00") for i in range(21, 26)])
        conn.execute(
            table.update().where(table.c.ID == 3).values(XM="改名一次", UPDATETIME="2026-01-02 09:00:00")
        )
        conn.execute(
            table.update().where(table.c.ID == 3).values(XM="改名两次", UPDATETIME="2026-01-02 09:30:00")
        )
        conn.execute(
            table.update().where(table.c.ID == 4).values(XM='带"引号",逗号', UPDATETIME="2026-01-02 09:00:00")
        )
        conn.execute(table.delete().where(table.c.ID.in_([5, 6])))
        conn.execute(
            table.update().where(table.c.ID == 7).values(STATUS="inactive", UPDATETIME="2026-01-02 09:00:00")
        )
        conn.execute(
            table.update().where(table.c.ID == 8).values(SECRET="changed only outside the subscription")
        )
    hub.publish()
    assert agent.catch_up() == 1
    header = agent.headers[-1]
    assert header.kind == "delta"
    assert header.counts["rows_upserted"] == 5 + 2  # 5 inserts, rows 3 and 4 (row 3 once)
    assert header.counts["rows_deleted"] == 3  # 5, 6 deleted, 7 left the filter
    assert agent.table() == source_state(db_url)

    # a row committed with the same cursor value as the last one published: not lost, not resent
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(30, "2026-01-02 09:30:00")])
    hub.publish()
    assert agent.catch_up() == 1
    assert agent.headers[-1].counts == {"rows_upserted": 1, "rows_deleted": 0, "plaintext_bytes": 40}
    assert agent.table() == source_state(db_url)

    # nothing changed: no package
    hub.publish()
    assert agent.catch_up() == 0

    # minimum necessary: nothing outside the subscription ever travelled
    everything = b"".join(agent.plaintexts).decode("utf-8")
    assert "SECRET" not in everything and "证件号" not in everything
    assert "OUTSIDE-FILTER" not in everything and "inactive" not in everything
    for h in agent.headers:
        assert [c["name"] for c in h.schema] == ["ID", "XM", "UPDATETIME"]
        assert h.catalog["resource_name"] == "人事处数据-教职工基本信息"
        assert h.catalog["agreement_id"] == "XY-2026-001"
    engine.dispose()


def test_late_subscriber_gets_snapshot_and_forced_snapshot(tmp_path: Path, sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1", "school-2"])
    hub.add_subscription(subscription_text(sqlite_url))
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 11)])
    hub.publish()
    with engine.begin() as conn:
        conn.execute(table.delete().where(table.c.ID == 1))
    hub.add_subscription(subscription_text(sqlite_url, agents=("school-1", "school-2")))
    hub.publish()
    first, late = ReplayAgent(hub, "school-1"), ReplayAgent(hub, "school-2")
    assert first.catch_up() == 2 and [h.kind for h in first.headers] == ["snapshot", "delta"]
    assert late.catch_up() == 1 and late.headers[0].kind == "snapshot"
    assert first.table() == late.table() == source_state(sqlite_url)
    assert first.headers[-1].expected_state == late.headers[-1].expected_state
    hub.publish("--snapshot")
    assert first.catch_up() == 1 and first.headers[-1].kind == "snapshot"
    assert first.table() == source_state(sqlite_url)
    engine.dispose()


def test_cursorless_source_uses_full_diff(tmp_path: Path, sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(subscription_text(sqlite_url, extra="  cursor: null"))
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 11)])
    hub.publish()
    with engine.begin() as conn:  # no cursor movement at all
        conn.execute(table.update().where(table.c.ID == 2).values(XM="无游标更新"))
        conn.execute(table.delete().where(table.c.ID == 3))
        conn.execute(table.insert(), [_row(11, "1999-01-01 00:00:00")])
    hub.publish()
    assert agent.catch_up() == 2
    assert agent.headers[-1].counts["rows_upserted"] == 2 and agent.headers[-1].counts["rows_deleted"] == 1
    assert agent.table() == source_state(sqlite_url)
    engine.dispose()


def test_insert_behind_the_cursor_is_still_found(tmp_path: Path, sqlite_url: str) -> None:
    """A row inserted with an old cursor value is caught by the key-range reconciliation,
    even when a delete in the same interval leaves the row count unchanged: with an integer key
    the range digest is (count, sum of keys)."""
    hub, engine, table = _setup(tmp_path, sqlite_url)
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-05 08:00:00") for i in range(1, 6)])
    hub.publish()
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(50, "2020-01-01 00:00:00")])
        conn.execute(table.delete().where(table.c.ID == 1))
    hub.publish()
    agent.catch_up()
    assert agent.table() == source_state(sqlite_url)
    engine.dispose()


def test_deletes_found_by_key_ranges(tmp_path: Path, db_url: str) -> None:
    """Scattered deletes in a table larger than one range are narrowed by range digests."""
    hub, engine, table = _setup(tmp_path, db_url)
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 10001)])
    hub.publish()
    with engine.begin() as conn:
        conn.execute(table.delete().where(table.c.ID.in_([1, 2, 4999, 5000, 9999, 10000])))
        conn.execute(table.insert(), [_row(20000, "2026-01-01 07:00:00")])  # behind the cursor
    hub.publish()
    assert agent.catch_up() == 2
    assert agent.headers[-1].counts["rows_deleted"] == 6
    assert agent.headers[-1].counts["rows_upserted"] == 1
    assert agent.table() == source_state(db_url)
    engine.dispose()


def test_soft_delete_column(tmp_path: Path, sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(
        subscription_text(sqlite_url, extra="  soft_delete: {column: SECRET, value: DELETED}")
    )
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 6)])
        conn.execute(table.insert(), [{**_row(9, "2026-01-01 08:00:00"), "SECRET": "DELETED"}])
    hub.publish()
    assert agent.catch_up() == 1 and len(agent.rows) == 5  # already soft-deleted: never sent
    with engine.begin() as conn:
        conn.execute(
            table.update().where(table.c.ID == 2).values(SECRET="DELETED", UPDATETIME="2026-01-02 00:00:00")
        )
    hub.publish()
    assert agent.catch_up() == 1
    assert agent.headers[-1].counts["rows_deleted"] == 1 and agent.headers[-1].counts["rows_upserted"] == 0
    with engine.connect() as conn:
        live = {r[0] for r in conn.execute(sa.select(table.c.ID).where(table.c.SECRET != "DELETED"))}
    assert {int(v[0]) for v in agent.rows.values()} == live
    engine.dispose()


def test_changed_filter_forces_a_snapshot(tmp_path: Path, sqlite_url: str) -> None:
    """The published state depends on columns, filter and source: changing them republishes in full."""
    hub, engine, table = _setup(tmp_path, sqlite_url)
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 6)])
        conn.execute(table.insert(), [_row(9, "2026-01-01 08:00:00", status="inactive")])
    hub.publish()
    hub.add_subscription(subscription_text(sqlite_url).replace("value: active", "value: inactive"))
    hub.publish()
    assert agent.catch_up() == 2 and agent.headers[-1].kind == "snapshot"
    assert list(agent.table()) == ['"9"']
    engine.dispose()


def test_revoked_agent_receives_nothing_more(tmp_path: Path, sqlite_url: str) -> None:
    from hub.cli import main as hub_main

    engine = sa.create_engine(sqlite_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1", "school-2"])
    hub.add_subscription(subscription_text(sqlite_url, agents=("school-1", "school-2")))
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(1, "2026-01-01 08:00:00")])
    hub.publish()
    assert hub_main(["revoke", str(hub.root), "--subscription", "staff", "--agent", "school-2"]) == 0
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(2, "2026-01-02 08:00:00")])
    hub.publish()
    kept = sorted(p.name.split(".")[1] for p in hub.inbox("school-1").iterdir())
    revoked = sorted(p.name.split(".")[1] for p in hub.inbox("school-2").iterdir())
    assert kept == ["000000000001", "000000000002"] and revoked == ["000000000001", "000000000002"]
    assert ReplayAgent(hub, "school-1").catch_up() == 2
    engine.dispose()


def test_cursorless_uses_source_row_hashes_per_key_range(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cursor, updates that move nothing are found by range digests with the source's
    own row hashes — and the full table is never read again after the snapshot."""
    from hub.source import TableReader

    engine = sa.create_engine(db_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(subscription_text(db_url, extra="  cursor: null"))
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 8001)])
    hub.publish()

    def no_full_scan(self: TableReader, with_hash: bool = False) -> None:
        raise AssertionError("a cursor-less delta read the whole table")

    monkeypatch.setattr(TableReader, "rows", no_full_scan)
    with engine.begin() as conn:  # nothing here moves a cursor
        conn.execute(table.update().where(table.c.ID.in_([7, 4000, 7999])).values(XM="悄悄改了"))
        conn.execute(table.update().where(table.c.ID == 10).values(XM=None))
        conn.execute(table.delete().where(table.c.ID.in_([100, 5000])))
        conn.execute(table.insert(), [_row(9000, "1999-01-01 00:00:00")])
        conn.execute(table.update().where(table.c.ID == 20).values(SECRET="not subscribed"))
    hub.publish()
    hub.publish()  # and nothing more the second time
    assert agent.catch_up() == 2
    assert agent.headers[-1].counts["rows_upserted"] == 5 and agent.headers[-1].counts["rows_deleted"] == 2
    assert agent.table() == source_state(db_url)
    engine.dispose()


def test_many_scattered_deletes_exhaust_the_query_budget(tmp_path: Path, sqlite_url: str) -> None:
    """Past the range-query budget the remaining ranges are read directly: still exact."""
    hub, engine, table = _setup(tmp_path, sqlite_url)
    agent = ReplayAgent(hub, "school-1")
    with engine.begin() as conn:
        conn.execute(table.insert(), [_row(i, "2026-01-01 08:00:00") for i in range(1, 12001)])
    hub.publish()
    with engine.begin() as conn:
        conn.execute(table.delete().where(table.c.ID % 37 == 0))
    hub.publish()
    assert agent.catch_up() == 2
    assert agent.headers[-1].counts["rows_deleted"] == 12000 // 37
    assert agent.table() == source_state(sqlite_url)
    engine.dispose()
