"""`edu-agent keys init|show`: create and display this party's identity (Ed25519 + X25519)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent import exitcodes
from protocol.errors import KeysError, KeysExistError, LayoutError
from protocol.keys import init_keys, load_keys


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="create or show this party's signing and encryption keys")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="create new keys (never overwrites) and print the public bundle")
    init.add_argument("--dir", required=True, help="key directory (created 0700; key files 0600)")
    init.add_argument("--id", required=True, dest="party_id", help="party id, e.g. the school's agent id")
    init.set_defaults(func=run_init)

    show = actions.add_parser("show", help="print the public bundle of existing keys")
    show.add_argument("--dir", required=True, help="key directory")
    show.set_defaults(func=run_show)


def run_init(args: argparse.Namespace) -> int:
    try:
        keys = init_keys(args.dir, args.party_id)
    except KeysExistError as exc:
        print(f"edu-agent keys init: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except (KeysError, LayoutError) as exc:
        print(f"edu-agent keys init: {exc}", file=sys.stderr)
        return exitcodes.USAGE if isinstance(exc, LayoutError) else exitcodes.FAILURE
    except OSError as exc:
        print(f"edu-agent keys init: cannot create keys in {args.dir}: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    print(keys.public_bundle().to_json())
    print(f"keys created in {args.dir}; register the bundle above with the platform", file=sys.stderr)
    return exitcodes.OK


def run_show(args: argparse.Namespace) -> int:
    try:
        keys = load_keys(args.dir)
    except KeysError as exc:
        print(f"edu-agent keys show: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    print(keys.public_bundle().to_json())
    return exitcodes.OK
