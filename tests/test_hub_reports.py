"""`edu-hub reports`: every state (ok, lagging, offline, error, purged), invalid reports, inbox pruning."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hub.cli import main as hub_main
from hub.reports import collect
from protocol.keys import PartyKeys
from protocol.layout import OUTBOX, new_package_id, package_filename
from protocol.package import PackageWriter
from tests.test_hub_common import HubFixture, staff_table, subscription_text

AGENTS = ("ok-1", "lag-2", "off-3", "err-4", "gone-5")


def _send(
    hub: HubFixture,
    agent: str,
    body: dict[str, Any],
    *,
    signer: PartyKeys | None = None,
    kind: str = "report",
    seq: int = 1,
) -> None:
    keys = signer or hub.agent_keys[agent]
    body = {"format": 1, "agent_id": agent, "time": _now(), **body}
    channel = body.get("subscription_id") or "heartbeat"
    package_id = new_package_id()
    path = hub.root / "exchange" / agent / OUTBOX / package_filename(channel, seq, package_id)
    with PackageWriter(
        path,
        kind=kind,
        sender=keys,
        recipient=hub.platform.public_bundle(),
        subscription=channel,
        sequence=seq,
        package_id=package_id,
    ) as writer:
        writer.write(json.dumps(body, ensure_ascii=False).encode("utf-8"))


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _heartbeat(hub: HubFixture, agent: str, seq: int, **entry: Any) -> None:
    sub = {"subscription_id": "staff", "applied_sequence": 0, "digest_match": None, "state": "ok", **entry}
    _send(hub, agent, {"type": "heartbeat", "interval_s": 60, "subscriptions": [sub]}, seq=seq)


def _receipt(hub: HubFixture, agent: str, package: Any, result: str = "applied", **extra: Any) -> None:
    body = {
        "type": "apply_receipt",
        "subscription_id": "staff",
        "package_id": package.package_id,
        "sequence": package.sequence,
        "kind": package.kind,
        "result": result,
        "digest_match": True,
        **extra,
    }
    _send(hub, agent, body, kind="receipt", seq=package.sequence)


def test_every_state(tmp_path: Path, sqlite_url: str, capsys: Any) -> None:
    from hub.state import PublishState

    engine = sa.create_engine(sqlite_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(), [{"ID": 1, "XM": "a", "STATUS": "active", "UPDATETIME": "2026-01-01 00:00:00"}]
        )
    hub = HubFixture(tmp_path, list(AGENTS))
    hub.add_subscription(subscription_text(sqlite_url, agents=AGENTS))
    hub.publish()
    assert hub_main(["revoke", str(hub.root), "--subscription", "staff", "--agent", "gone-5"]) == 0
    assert hub_main(["revoke", str(hub.root), "--subscription", "staff", "--agent", "gone-5"]) == 1
    assert "already revoked" in capsys.readouterr().err
    state = PublishState(hub.root / "state" / "staff.db")
    packages = {a: state.packages(a) for a in AGENTS}
    state.close()
    assert [p.kind for p in packages["gone-5"]] == ["snapshot", "revoke"]

    _heartbeat(hub, "ok-1", 1, applied_sequence=0)
    outbox = hub.root / "exchange" / "ok-1" / OUTBOX
    (superseded,) = [p.name for p in outbox.iterdir()]
    time.sleep(1.1)  # document times have second precision
    _heartbeat(hub, "ok-1", 2, applied_sequence=1, digest_match=True)
    # a heartbeat document inside a package of kind "receipt": rejected
    _send(hub, "ok-1", {"type": "heartbeat", "subscriptions": []}, kind="receipt", seq=8)
    _receipt(hub, "ok-1", packages["ok-1"][0])
    _heartbeat(hub, "lag-2", 1)
    _heartbeat(hub, "err-4", 1)
    _receipt(
        hub,
        "err-4",
        packages["err-4"][0],
        result="rejected",
        digest_match=None,
        error={"code": "schema_incompatible", "message": "column XM narrowed"},
    )
    _heartbeat(hub, "gone-5", 1, applied_sequence=1)
    _receipt(hub, "gone-5", packages["gone-5"][0])
    revoke = packages["gone-5"][1]
    _send(
        hub,
        "gone-5",
        {
            "type": "deletion_receipt",
            "subscription_id": "staff",
            "package_id": revoke.package_id,
            "sequence": revoke.sequence,
            "purged": {"target": "T_STAFF", "rows": 1, "files": 0},
        },
        kind="receipt",
        seq=9,
    )
    # forged: a heartbeat in ok-1's outbox signed by another agent's key
    _send(hub, "ok-1", {"type": "heartbeat", "subscriptions": []}, signer=hub.agent_keys["lag-2"], seq=7)
    (hub.root / "exchange" / "ok-1" / OUTBOX / "junk.txt").write_text("not a package")

    summary = collect(hub.root, lag_after=0.0)
    states = {r.agent: r.state for r in summary.rows}
    assert states == {
        "ok-1": "ok",
        "lag-2": "lagging",
        "off-3": "offline",
        "err-4": "error",
        "gone-5": "purged",
    }
    rows = {r.agent: r for r in summary.rows}
    assert rows["ok-1"].published_sequence == 1 and rows["ok-1"].applied_sequence == 1
    assert rows["ok-1"].digest_match is True and rows["ok-1"].lag_packages == 0
    assert rows["lag-2"].lag_packages == 1
    assert "schema_incompatible" in rows["err-4"].detail
    invalid = {(i["agent"], i["file"]) for i in summary.invalid}
    assert ("ok-1", "junk.txt") in invalid
    assert any(f.startswith("heartbeat.000000000008") for a, f in invalid if a == "ok-1")
    assert not (outbox / superseded).exists()  # only the newest heartbeat is kept
    assert any(a == "ok-1" and f.startswith("heartbeat.000000000007") for a, f in invalid)
    # acknowledged packages are pruned from the inbox, unacknowledged ones stay
    assert packages["ok-1"][0].filename in summary.pruned
    assert not (hub.inbox("ok-1") / packages["ok-1"][0].filename).exists()
    assert (hub.inbox("lag-2") / packages["lag-2"][0].filename).exists()

    capsys.readouterr()
    assert hub_main(["reports", str(hub.root), "--json", "--lag-after", "0"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["agent"]: r["state"] for r in shown["subscriptions"]} == states
    assert hub_main(["reports", str(hub.root)]) == 0
    text = capsys.readouterr().out
    assert "INVALID outbox files" in text and "offline" in text
    engine.dispose()


def test_requests_are_honoured_once(tmp_path: Path, sqlite_url: str) -> None:
    from tests.test_hub_common import ReplayAgent, source_state

    engine = sa.create_engine(sqlite_url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [{"ID": i, "XM": "a", "STATUS": "active", "UPDATETIME": "2026-01-01 00:00:00"} for i in range(5)],
        )
    hub = HubFixture(tmp_path, ["ok-1", "lag-2"])
    hub.add_subscription(subscription_text(sqlite_url, agents=("ok-1", "lag-2")))
    hub.publish()
    asking, quiet = ReplayAgent(hub, "lag-2"), ReplayAgent(hub, "ok-1")
    assert asking.catch_up() == 1 and quiet.catch_up() == 1
    request = {
        "type": "request",
        "subscription_id": "staff",
        "request_id": "r1",
        "request": "resync",
        "buckets": [],
        "files": [],
        "reason": "local table lost",
    }
    _send(hub, "lag-2", request, kind="request", seq=1)
    hub.publish()
    assert asking.catch_up() == 1 and asking.headers[-1].kind == "snapshot"
    assert quiet.catch_up() == 0  # nothing changed for the agent that did not ask
    hub.publish()
    assert asking.catch_up() == 0  # a request is honoured once
    _send(
        hub,
        "lag-2",
        {**request, "request_id": "r2", "request": "resend_buckets", "buckets": [3]},
        kind="request",
        seq=2,
    )
    # a forged request (signed by another agent) is ignored
    _send(hub, "lag-2", {**request, "request_id": "r3"}, kind="request", seq=3, signer=hub.agent_keys["ok-1"])
    hub.publish()  # only the genuine request: a resend of bucket 3, no snapshot
    assert asking.catch_up() == 1 and asking.headers[-1].kind == "delta"
    assert asking.headers[-1].replace_buckets == (3,)
    hub.publish()
    assert asking.catch_up() == 0
    assert asking.table() == quiet.table() == source_state(sqlite_url)
    engine.dispose()


def test_reports_defer_pruning_while_a_publish_holds_the_state(tmp_path: Path, sqlite_url: str) -> None:
    from hub.state import PublishState

    engine = sa.create_engine(sqlite_url)
    staff_table(sa.MetaData()).create(engine)
    hub = HubFixture(tmp_path, ["ok-1"])
    hub.add_subscription(subscription_text(sqlite_url, agents=("ok-1",)))
    hub.publish()
    state = PublishState(hub.root / "state" / "staff.db")
    (package,) = state.packages("ok-1")
    _heartbeat(hub, "ok-1", 1, applied_sequence=1)
    state.db.execute("BEGIN IMMEDIATE")  # as a long publish does
    try:
        summary = collect(hub.root)
    finally:
        state.db.execute("ROLLBACK")
    assert summary.deferred == ["staff"] and summary.pruned == []
    assert (hub.inbox("ok-1") / package.filename).exists()
    assert collect(hub.root).pruned == [package.filename]
    state.close()
    engine.dispose()
