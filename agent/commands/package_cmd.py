"""`edu-agent package inspect`: verify a package and print its header and every check."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from agent import exitcodes
from protocol.errors import KeysError
from protocol.keys import PartyKeys, PublicBundle, load_bundle, load_keys
from protocol.package import inspect_package


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("package", help="work with exchange packages")
    actions = parser.add_subparsers(dest="package_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="verify a package and print its header",
        description=(
            "Checks, in order: signature (against --sender-bundle), recipient (with --keys), expiry, "
            "suite, payload digest, and every chunk (with --keys). Exit 0 if the signature verified "
            "and no check failed; checks that need keys you did not give are reported as skipped."
        ),
    )
    inspect.add_argument("file", help="package file")
    inspect.add_argument("--keys", metavar="DIR", help="the recipient's key directory (decrypts every chunk)")
    inspect.add_argument(
        "--sender-bundle",
        metavar="FILE",
        action="append",
        default=[],
        help="pinned public bundle of a trusted sender (repeatable)",
    )
    inspect.add_argument("--now", metavar="TIME", help="check expiry at this ISO time instead of now")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    try:
        senders: dict[str, PublicBundle] = {}
        for path in args.sender_bundle:
            bundle = load_bundle(path)
            senders[bundle.party_id] = bundle
        recipient: PartyKeys | None = load_keys(args.keys) if args.keys else None
    except KeysError as exc:
        print(f"edu-agent package inspect: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    now = None
    if args.now:
        try:
            now = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        except ValueError:
            now = None
        if now is None or now.tzinfo is None:
            print(f"edu-agent package inspect: --now {args.now!r} needs a time zone", file=sys.stderr)
            return exitcodes.USAGE
    try:
        result = inspect_package(args.file, trusted_senders=senders, recipient=recipient, now=now)
    except OSError as exc:
        print(f"edu-agent package inspect: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return exitcodes.FAILURE
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, sort_keys=True))
    else:
        print(f"package {result.path}")
        for name, (status, detail) in result.checks.items():
            print(f"  {name:<10} {status.upper():<8} {detail}")
        label = "header (verified)" if result.header_verified else "header (NOT verified)"
        print(f"{label}:")
        print(json.dumps(result.header, ensure_ascii=False, sort_keys=True, indent=2))
        print("result: OK" if result.ok else "result: FAILED (see checks above)")
    return exitcodes.OK if result.ok else exitcodes.FAILURE
