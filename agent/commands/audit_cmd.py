"""`edu-agent audit verify -c FILE [--expect-head SEQ:HASH] [--json]`: check the audit trail's hash chain."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent import exitcodes
from agent.audit import Head, verify
from agent.config import load_config


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser("audit", help="the audit trail (审计跟踪)")
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "verify", help="verify the hash chain (exit 0 intact, 1 broken)",
        description="Walk the audit log, check every entry's hash and link, and compare the end with "
        "the local head file and, if given, the head the platform last received in a heartbeat.")
    add_config_option(check)
    check.add_argument("--expect-head", metavar="SEQ:HASH", type=Head.parse,
                       help="the audit head the platform holds (from the latest heartbeat)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = config.audit_path
    if not path.exists():
        print(f"{path}: no audit log (has the agent run yet?)")
        return exitcodes.FAILURE
    result = verify(path, expect_head=args.expect_head)
    if args.json:
        print(json.dumps({"path": str(path), **result.as_dict()}, ensure_ascii=False, indent=2))
    else:
        verdict = "intact" if result.ok else "BROKEN"
        print(f"{path}: {verdict}, {result.entries} entries, head {result.head}")
        for error in result.errors:
            print(f"  {error}")
    return exitcodes.OK if result.ok else exitcodes.FAILURE
