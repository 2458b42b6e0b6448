"""Report documents (docs/hub.md shapes) and the bounded local queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.reports import QueuedReport, ReportBuilder, ReportQueue


@pytest.fixture
def builder() -> ReportBuilder:
    return ReportBuilder("school-1", started=1_764_000_000.0, clock=lambda: 1_764_000_300.0)


def test_documents_follow_hub_formats(builder: ReportBuilder) -> None:
    hb = builder.heartbeat(interval_s=300, config_digest="cd", subscriptions=[], disk_free={"db": 10},
                           audit_head={"seq": 3, "hash": "ab"}, queue_length=0)
    assert {k: hb[k] for k in ("format", "type", "agent_id", "time", "interval_s", "uptime_s")} == {
        "format": 1, "type": "heartbeat", "agent_id": "school-1", "time": "2025-11-24T16:05:00Z",
        "interval_s": 300, "uptime_s": 300}
    assert hb["started"] == "2025-11-24T16:00:00Z"
    receipt = builder.apply_receipt(subscription_id="s", package_id="p", sequence=2, kind="delta",
                                    result="applied", rows_upserted=5, digest_match=False,
                                    mismatched_buckets=[3, 17])
    assert receipt["mismatched_buckets"] == [3, 17]
    assert receipt["error"] is None
    with pytest.raises(ValueError):
        builder.apply_receipt(subscription_id="s", package_id="p", sequence=2, kind="delta", result="maybe")
    req = builder.request(subscription_id="s", request="resend_buckets", reason="mismatch", buckets=[1])
    assert len(req["request_id"]) == 32
    deletion = builder.deletion_receipt(subscription_id="s", package_id="r", sequence=9, target="T", rows=4,
                                        files=0)
    assert deletion["purged"] == {"target": "T", "rows": 4, "files": 0}


def test_queue_keeps_order_and_survives_restart(tmp_path: Path, builder: ReportBuilder) -> None:
    queue = ReportQueue(tmp_path / "q")
    for seq in range(1, 4):
        queue.put(builder.apply_receipt(subscription_id="s", package_id=f"p{seq}", sequence=seq, kind="delta",
                                        result="applied"))
    again = ReportQueue(tmp_path / "q")
    assert [r.document["sequence"] for r in again] == [1, 2, 3]
    assert all(r.path.stat().st_mode & 0o077 == 0 for r in again)


def test_bound_drops_oldest_heartbeats_never_receipts(tmp_path: Path, builder: ReportBuilder) -> None:
    hb = builder.heartbeat(interval_s=60, config_digest="x", subscriptions=[], disk_free={}, audit_head={},
                           queue_length=0)
    one = len(json.dumps({**hb, "n": 0}, separators=(",", ":")))
    queue = ReportQueue(tmp_path / "q", max_bytes=5 * one)  # room for about five documents
    for i in range(4):
        queue.put({**hb, "n": i})
    for seq in range(6):
        queue.put(builder.apply_receipt(subscription_id="s", package_id=f"p{seq}", sequence=seq, kind="delta",
                                        result="applied"))
    queue.put({**hb, "n": 99})
    kept = list(queue)
    receipts = [r.document["sequence"] for r in kept if r.type == "apply_receipt"]
    heartbeats = [r.document["n"] for r in kept if r.type == "heartbeat"]
    assert receipts == list(range(6))  # never dropped, even over the bound
    assert heartbeats == [99]  # the newest heartbeat is always kept
    assert queue.dropped == 4
    assert queue.size() > queue.max_bytes  # over the bound only because receipts are never dropped


def test_delivery_stops_at_first_failure_and_resumes(tmp_path: Path, builder: ReportBuilder) -> None:
    queue = ReportQueue(tmp_path / "q")
    for seq in range(5):
        queue.put(builder.error(subscription_id="s", code="c", message=f"m{seq}", sequence=seq))
    delivered: list[int] = []
    platform_up = [True]

    def send(report: QueuedReport) -> None:
        if not platform_up[0] or len(delivered) == 2:
            platform_up[0] = False
            raise ConnectionError("platform unreachable")
        delivered.append(report.document["sequence"])

    with pytest.raises(ConnectionError):
        queue.deliver(send)
    assert delivered == [0, 1]
    assert len(queue) == 3
    platform_up[0] = True
    delivered.clear()
    assert queue.deliver(lambda r: delivered.append(r.document["sequence"])) == 3
    assert delivered == [2, 3, 4]
    assert len(queue) == 0


def test_queue_refuses_non_reports(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a report"):
        ReportQueue(tmp_path).put({"type": "package"})
    assert not list(tmp_path.iterdir())
    json.dumps({})


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(["heartbeat", "apply_receipt", "error", "request"]), min_size=1,
                      max_size=25),
       bound_docs=st.integers(min_value=1, max_value=12))
def test_queue_bound_invariants(tmp_path_factory: pytest.TempPathFactory, kinds: list[str],
                                bound_docs: int) -> None:
    """Whatever arrives: every non-heartbeat is kept in order, the newest heartbeat is kept, and the
    queue is within its bound unless the non-heartbeats alone exceed it."""
    builder = ReportBuilder("school-1", started=0.0, clock=lambda: 1_764_000_000.0)
    sample = builder.heartbeat(interval_s=60, config_digest="x", subscriptions=[], disk_free={},
                               audit_head={}, queue_length=0)
    queue = ReportQueue(tmp_path_factory.mktemp("q"), max_bytes=bound_docs * len(json.dumps(sample)))
    for n, kind in enumerate(kinds):
        if kind == "heartbeat":
            doc = {**sample, "n": n}
        elif kind == "apply_receipt":
            doc = builder.apply_receipt(subscription_id="s", package_id="p", sequence=n, kind="delta",
                                        result="applied")
        elif kind == "error":
            doc = builder.error(subscription_id="s", code="c", message="m", sequence=n)
        else:
            doc = {**builder.request(subscription_id="s", request="resync", reason="r"), "n": n}
        queue.put(doc)
    kept = list(queue)
    others = [r.document.get("sequence", r.document.get("n")) for r in kept if r.type != "heartbeat"]
    expected = [n for n, k in enumerate(kinds) if k != "heartbeat"]
    assert others == expected
    heartbeats = [n for n, k in enumerate(kinds) if k == "heartbeat"]
    kept_heartbeats = [r.document["n"] for r in kept if r.type == "heartbeat"]
    if heartbeats:
        assert kept_heartbeats[-1] == heartbeats[-1]
    assert kept_heartbeats == sorted(kept_heartbeats)
    non_heartbeat_bytes = sum(r.path.stat().st_size for r in kept if r.type != "heartbeat")
    if non_heartbeat_bytes <= queue.max_bytes and len(kept_heartbeats) > 1:
        assert queue.size() <= queue.max_bytes
