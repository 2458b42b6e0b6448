"""`edu-agent verify -c FILE [--subscription ID] [--json]`: recompute digests from the local copies.

Each subscription's store recomputes its digest from the actual table rows or files and
compares it with the digest the platform signed for the applied position. A mismatch is
printed with the buckets or files that differ, recorded in the audit trail, and a request
to resend exactly those is queued for the platform.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from agent import exitcodes
from agent.audit import AuditTrail
from agent.config import UnmappedSubscription, load_config
from agent.reports import ReportBuilder, ReportQueue
from agent.state import State
from agent.stores import open_store
from agent.subscription_list import parse_subscription_list


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser("verify", help="recompute and compare the digests of the local copies")
    add_config_option(parser)
    parser.add_argument("--subscription", metavar="ID", help="only this subscription")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    state = State(config.agent.state_dir, readonly=True)
    try:
        raw = state.meta("subscriptions_json")
    finally:
        state.close()
    if raw is None:
        print("no verified subscription list in the local state yet (run the agent first)")
        return exitcodes.FAILURE
    entries = parse_subscription_list(raw.encode(), config.agent.id)
    if args.subscription is not None:
        if args.subscription not in entries:
            print(f"subscription {args.subscription} is not in the subscription list")
            return exitcodes.FAILURE
        entries = {args.subscription: entries[args.subscription]}
    audit = AuditTrail(config.audit_path)
    queue = ReportQueue(config.agent.state_dir / "outqueue", max_bytes=config.reporting.max_queue_size)
    reports = ReportBuilder(config.agent.id, started=time.time())
    results: list[dict[str, Any]] = []
    for sub_id, entry in sorted(entries.items()):
        results.append(_verify_one(config, sub_id, entry, audit, queue, reports))
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for r in results:
            print(_line(r))
    return exitcodes.OK if all(r["ok"] for r in results) else exitcodes.FAILURE


def _verify_one(config: Any, sub_id: str, entry: Any, audit: AuditTrail, queue: ReportQueue,
                reports: ReportBuilder) -> dict[str, Any]:
    try:
        store = open_store(config.resolve(sub_id, entry.provision_method), entry, config, recover=False)
    except UnmappedSubscription as exc:
        return {"subscription_id": sub_id, "ok": False, "error": str(exc)}
    try:
        result = store.verify()
    except Exception as exc:
        return {"subscription_id": sub_id, "target": store.target, "ok": False,
                "error": f"{type(exc).__name__}: {exc}"}
    finally:
        store.close()
    out = {"subscription_id": sub_id, "kind": store.kind, "target": store.target, "ok": result.ok,
           "local_digest": result.local_digest, "expected_digest": result.expected_digest,
           "mismatched_buckets": result.mismatched_buckets, "mismatched_files": result.mismatched_files,
           **result.detail}
    audit.record("verify.run", subscription=sub_id, ok=result.ok, local_digest=result.local_digest,
                 buckets=result.mismatched_buckets, files=result.mismatched_files[:100])
    if not result.ok:
        if result.mismatched_buckets:
            request = reports.request(subscription_id=sub_id, request="resend_buckets",
                                      reason="local verify found a mismatch",
                                      buckets=result.mismatched_buckets, files=result.mismatched_files)
        elif result.mismatched_files:
            request = reports.request(subscription_id=sub_id, request="resend_files",
                                      reason="local verify found drift", files=result.mismatched_files)
        else:
            request = reports.request(subscription_id=sub_id, request="resync",
                                      reason="local verify found a mismatch")
        queue.put(request)
        out["request"] = request["request"]
    return out


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['subscription_id']}: ERROR {r['error']}"
    if r["ok"]:
        return f"{r['subscription_id']} ({r['target']}): ok, digest {str(r['local_digest'])[:16]}…"
    what = (f"buckets {r['mismatched_buckets']}" if r["mismatched_buckets"]
            else f"files {r['mismatched_files'][:20]}")
    return (f"{r['subscription_id']} ({r['target']}): MISMATCH {what}; "
            f"expected {str(r['expected_digest'])[:16]}…, found {str(r['local_digest'])[:16]}…; "
            f"{r.get('request')} requested")
