"""`edu-agent resync -c FILE --subscription ID`: ask the platform for a full snapshot.

The request is queued with the other reports in the state directory and recorded in the
audit trail. If no daemon is running it is delivered right away; otherwise the running
daemon delivers it with its next reports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent import exitcodes
from agent.audit import AuditTrail
from agent.config import load_config
from agent.reports import ReportBuilder, ReportQueue
from agent.state import StateLock, StateLocked


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser("resync", help="ask the platform for a full snapshot of a subscription")
    add_config_option(parser)
    parser.add_argument("--subscription", required=True, metavar="ID", help="subscription id")
    parser.add_argument("--reason", default="requested by the operator", help="why (goes to the platform)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    state_dir = config.agent.state_dir
    queue = ReportQueue(state_dir / "outqueue", max_bytes=config.reporting.max_queue_size)
    request = ReportBuilder(config.agent.id, started=time.time()).request(
        subscription_id=args.subscription, request="resync", reason=args.reason)
    queue.put(request)
    AuditTrail(config.audit_path).record("resync.requested", subscription=args.subscription,
                                         request_id=request["request_id"], reason=args.reason)
    print(f"resync of {args.subscription} requested (request {request['request_id']})")
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except StateLocked:
        print("the running agent delivers it with its next reports")
        return exitcodes.OK
    try:
        return _deliver_now(Path(args.config), queue)
    finally:
        lock.release()


def _deliver_now(config_path: Path, queue: ReportQueue) -> int:
    from agent.sync import load_runtime

    runtime = load_runtime(config_path)
    try:
        sent = queue.deliver(runtime.send_report)
    except Exception as exc:
        print(f"platform not reachable now ({exc}); the request stays queued for the next run")
        return exitcodes.OK
    finally:
        runtime.close()
    print(f"delivered {sent} queued report(s) to the platform's outbox")
    return exitcodes.OK
