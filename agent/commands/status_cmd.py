"""`edu-agent status -c FILE [--json]`: what this agent has applied, from local state only.

Reads the state database read-only (the running daemon keeps its lock), the audit head and
the report queue; never contacts the platform or the databases.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from typing import Any

from agent import exitcodes
from agent.audit import AuditTrail
from agent.config import AgentConfig, load_config
from agent.reports import ReportQueue, rfc3339
from agent.scheduling import Scheduler
from agent.state import State, StateLock, subscription_view
from agent.subscription_list import parse_subscription_list


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser("status", help="show local sync state (no network)")
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def collect(config_path: str) -> dict[str, Any]:
    config = load_config(config_path)
    state_dir = config.agent.state_dir
    state = State(state_dir, readonly=True)
    try:
        rows = [subscription_view(r) for r in state.subscriptions()]
        quarantine = state.quarantined()
        config_digest = state.meta("config_digest")
        next_runs = _next_runs(state, config)
        watch_modes = {r["subscription_id"]: state.meta(f"watch:{r['subscription_id']}") for r in rows}
    finally:
        state.close()
    for row in rows:
        row["next_run"] = next_runs.get(row["subscription_id"])
        if row["kind"] == "file":
            row["drift_watch"] = watch_modes.get(row["subscription_id"])
    queue_dir = state_dir / "outqueue"
    queue = ReportQueue(queue_dir) if queue_dir.is_dir() else None
    return {
        "agent_id": config.agent.id,
        "state_dir": str(state_dir),
        "running_pid": StateLock(state_dir).holder(),
        "config_digest": config_digest,
        "audit_head": AuditTrail(config.audit_path).head().as_dict() if config.audit_path.exists() else None,
        "report_queue": {"documents": len(queue) if queue else 0, "bytes": queue.size() if queue else 0},
        "subscriptions": rows,
        "quarantine": [{k: q[k] for k in ("subscription_id", "package_name", "sequence", "reason", "path")}
                       | {"at": rfc3339(q["at"])} for q in quarantine],
    }


def _next_runs(state: State, config: AgentConfig) -> dict[str, str]:
    """When each subscription of the last verified list runs next, by its update frequency."""
    raw = state.meta("subscriptions_json")
    if not raw:
        return {}
    entries = parse_subscription_list(raw.encode(), config.agent.id)
    scheduler = Scheduler(state, config.platform.poll_interval.total_seconds())
    scheduler.set_subscriptions({sub_id: e.schedule for sub_id, e in entries.items()})
    now = time.time()
    out = {}
    for sub_id in entries:
        at = scheduler.next_run(sub_id)
        out[sub_id] = "now" if at <= now else (rfc3339(at) or "")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        status = collect(args.config)
    except FileNotFoundError as exc:
        print(str(exc))
        return exitcodes.FAILURE
    if args.json:
        print(json.dumps(status, ensure_ascii=False, indent=2))
    else:
        print(render(status))
    bad = any(s["state"] in ("error", "held") or s["digest_match"] is False for s in status["subscriptions"])
    return exitcodes.FAILURE if bad else exitcodes.OK


def render(status: dict[str, Any]) -> str:
    running = f"running (pid {status['running_pid']})" if status["running_pid"] else "not running"
    head = status["audit_head"]
    lines = [
        f"agent {status['agent_id']}: {running}; state {status['state_dir']}",
        f"audit head {head['seq']}:{head['hash'][:16]}…" if head else "audit: no log yet",
        f"reports queued: {status['report_queue']['documents']} ({status['report_queue']['bytes']} bytes)",
        "",
    ]
    header = ("SUBSCRIPTION", "KIND", "TARGET", "APPLIED", "PUB", "LAG", "DIGEST", "LAST SUCCESS", "NEXT RUN",
              "STATE")
    table = [header]
    for s in status["subscriptions"]:
        digest = {True: "match", False: "MISMATCH", None: "-"}[s["digest_match"]]
        table.append((s["subscription_id"], s["kind"] or "-", s["target"] or "-", str(s["applied_sequence"]),
                      _dash(s["published_sequence"]), _dash(s["lag"]), digest, s["last_success"] or "never",
                      _dash(s.get("next_run")), s["state"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for s in status["subscriptions"]:
        if s.get("drift_watch"):
            lines.append(f"  {s['subscription_id']}: drift watch {s['drift_watch']}")
        if s["state"] in ("error", "held") and (s["last_error"] or s["held_gap"]):
            lines.append(f"  {s['subscription_id']}: {s['last_error'] or ''} {s['held_gap'] or ''}".rstrip())
    if status["quarantine"]:
        lines.append("")
        lines.append("quarantined packages:")
        for q in status["quarantine"]:
            lines.append(f"  {q['at']}  {q['package_name']}  {q['reason']}")
            lines.append(f"      copy: {q['path']}")
    lines.append("")
    lines.append(f"as of {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} (local state only)")
    return "\n".join(lines)


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
