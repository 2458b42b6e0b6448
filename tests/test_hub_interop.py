"""The hub's packages applied by the agent's real table store: signed expected digests must match."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from connectors.stores.tables.store import TableStore
from protocol.layout import sorted_packages
from protocol.package import open_package
from tests.test_hub_common import HubFixture, source_state, staff_table, subscription_text


def _apply_all(hub: HubFixture, store: TableStore, done: set[str]) -> list[object]:
    names, _ = sorted_packages(p.name for p in hub.inbox("school-1").iterdir())
    trusted = {"platform": hub.platform.public_bundle()}
    results = []
    for name in names:
        if name.filename in done:
            continue
        path = hub.inbox("school-1") / name.filename
        with open_package(path, trusted_senders=trusted, recipient=hub.agent_keys["school-1"]) as pkg:
            results.append(store.apply(pkg.header, pkg.plaintext(), "T_COPY"))
        done.add(name.filename)
    return results


def test_agent_store_agrees_with_hub_digests(tmp_path: Path, db_url: str) -> None:
    engine = sa.create_engine(db_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "ID": i,
                    "XM": f"教师{i}",
                    "SECRET": "s",
                    "STATUS": "active",
                    "UPDATETIME": "2026-01-01 08:00:00",
                }
                for i in range(1, 3001)
            ],
        )
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(subscription_text(db_url))
    hub.publish()
    target_url = f"sqlite:///{tmp_path / 'agent.db'}"
    store = TableStore(target_url)
    done: set[str] = set()
    (first,) = _apply_all(hub, store, done)
    assert first.status == "applied" and first.match is True
    with engine.begin() as conn:
        conn.execute(
            table.update().where(table.c.ID < 50).values(XM="新名字", UPDATETIME="2026-01-02 00:00:00")
        )
        conn.execute(table.delete().where(table.c.ID.between(1000, 1010)))
        conn.execute(
            table.insert(),
            [{"ID": 5000, "XM": None, "STATUS": "active", "UPDATETIME": "2026-01-02 00:00:00"}],
        )
    hub.publish()
    (second,) = _apply_all(hub, store, done)
    assert second.status == "applied" and second.match is True, second
    assert (second.rows_upserted, second.rows_deleted) == (50, 11)
    target = sa.create_engine(target_url)
    with target.connect() as conn:
        copied = {
            str(r[0]): r for r in conn.execute(sa.text('SELECT "ID", "XM", "UPDATETIME" FROM "T_COPY"'))
        }
    expected = source_state(db_url)
    assert len(copied) == len(expected)
    for values in expected.values():
        row = copied[values[0]]
        assert (row[1], row[2]) == (values[1], values[2])
    target.dispose()
    engine.dispose()
