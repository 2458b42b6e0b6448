"""`edu-hub`: the reference platform's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.exitcodes import FAILURE, OK, USAGE
from agent.logsetup import configure_logging
from hub.catalog import CatalogError
from hub.registry import Registry, RegistryError
from hub.sftp import SftpAccount, SftpConfigError, render_sshd_config
from protocol.package import SUITE_V1, SUPPORTED_SUITES


class HubError(RuntimeError):
    """An operator-facing failure: printed as one clear line, exit code 1."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True))


# ---------------------------------------------------------------- init


def cmd_init(args: argparse.Namespace) -> int:
    from protocol.keys import init_keys

    root: Path = args.dir
    if (root / "hub.db").exists():
        raise HubError(f"{root} is already a hub directory")
    registry = Registry.create(root)
    keys = init_keys(registry.keys_dir, args.id)
    print(f"hub initialised in {root}: platform id {keys.party_id}")
    print(keys.public_bundle().to_json())
    return OK


# ---------------------------------------------------------------- agents


def cmd_agent_add(args: argparse.Namespace) -> int:
    from hub.publish import Publisher

    with Publisher.open(args.dir) as pub:
        record = pub.add_agent(args.id, args.keys, args.ssh_key)
    print(f"agent {record.id} registered (signing key {record.bundle['signing_key_id'][:16]}…)")
    return OK


def cmd_agent_list(args: argparse.Namespace) -> int:
    registry = Registry(args.dir)
    agents = registry.agents()
    if args.json:
        _print_json(
            [{"id": a.id, "bundle": a.bundle, "ssh_key": a.ssh_key, "added": a.added} for a in agents]
        )
        return OK
    for a in agents:
        ssh = "ssh key" if a.ssh_key else "no ssh key"
        print(f"{a.id}\t{a.added}\t{a.bundle.get('signing_key_id', '')[:16]}\t{ssh}")
    return OK


def cmd_agent_suite(args: argparse.Namespace) -> int:
    registry = Registry(args.dir)
    if args.suite is not None:
        registry.set_agent_suite(args.id, args.suite)
    print(f"{args.id}\t{registry.agent_suite(args.id)}")
    return OK


def cmd_agent_remove(args: argparse.Namespace) -> int:
    registry = Registry(args.dir)
    registry.remove_agent(args.id)
    print(f"agent {args.id} removed")
    return OK


# ---------------------------------------------------------------- subscriptions


def cmd_subscription_add(args: argparse.Namespace) -> int:
    from hub.publish import Publisher

    with Publisher.open(args.dir) as pub:
        sub, new = pub.put_subscription(args.file)
    print(f"subscription {sub.id} {'added' if new else 'updated'}: {sub.catalog.resource_name}")
    return OK


def cmd_subscription_list(args: argparse.Namespace) -> int:
    registry = Registry(args.dir)
    subs = registry.subscriptions()
    if args.json:
        _print_json([{"id": s.id, "resource_name": s.catalog.resource_name} for s in subs])
        return OK
    for s in subs:
        agents = ",".join(x.agent for x in s.subscribers)
        print(f"{s.id}\t{s.catalog.provision_method}\t{s.catalog.resource_name}\t{agents}")
    return OK


def cmd_subscription_show(args: argparse.Namespace) -> int:
    registry = Registry(args.dir)
    sub = registry.subscription(args.id)
    _print_json(sub.model_dump(mode="json", by_alias=True))
    return OK


# ---------------------------------------------------------------- publish, revoke, reports


def cmd_publish(args: argparse.Namespace) -> int:
    from hub.publish import Publisher

    with Publisher.open(args.dir) as pub:
        results = pub.publish(args.subscription, snapshot=args.snapshot)
    for r in results:
        print(r.describe())
    return FAILURE if any(r.error for r in results) else OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from hub.publish import Publisher

    with Publisher.open(args.dir) as pub:
        written = pub.revoke(args.subscription, args.agent)
    for agent, name in written:
        print(f"revocation for {agent}: inbox/{name}")
    return OK


def cmd_reports(args: argparse.Namespace) -> int:
    from hub.reports import collect, render_table

    summary = collect(args.dir, offline_after=args.offline_after, lag_after=args.lag_after)
    if args.json:
        _print_json(summary.to_json())
    else:
        print(render_table(summary))
    return OK


def cmd_sftp_config(args: argparse.Namespace) -> int:
    registry = Registry(args.dir)
    exchange = args.exchange_root or registry.exchange_dir.absolute()
    accounts = [SftpAccount.for_agent(exchange, a.id) for a in registry.agents()]
    print(render_sshd_config(accounts, registry.authorized_keys_dir.absolute()), end="")
    return OK


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edu-hub", description="Reference platform of the exchange protocol"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create platform keys, the exchange layout and the registry")
    p.add_argument("dir", type=Path)
    p.add_argument("--id", default="platform", help="the platform's party id (default: platform)")
    p.set_defaults(func=cmd_init)

    agent = sub.add_parser("agent", help="register agents").add_subparsers(
        dest="agent_command", required=True
    )
    p = agent.add_parser("add", help="register the bundle printed by `edu-agent keys init`")
    p.add_argument("dir", type=Path)
    p.add_argument("--id", required=True)
    p.add_argument("--keys", type=Path, required=True, metavar="BUNDLE.json")
    p.add_argument("--ssh-key", type=Path, metavar="KEY.pub", help="the agent's OpenSSH public key for SFTP")
    p.set_defaults(func=cmd_agent_add)
    p = agent.add_parser("list")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agent_list)
    p = agent.add_parser("remove")
    p.add_argument("dir", type=Path)
    p.add_argument("--id", required=True)
    p.set_defaults(func=cmd_agent_remove)
    p = agent.add_parser("suite", help="show or set the crypto suite of packages for an agent")
    p.add_argument("dir", type=Path)
    p.add_argument("--id", required=True)
    p.add_argument(
        "--suite",
        choices=sorted(SUPPORTED_SUITES),
        help=f"{SUITE_V1} for an agent older than the default suite; the default removes the pin",
    )
    p.set_defaults(func=cmd_agent_suite)

    subs = sub.add_parser("subscription", help="catalog entries and subscribers").add_subparsers(
        dest="subscription_command", required=True
    )
    p = subs.add_parser("add", help="validate and register (or update) a subscription file")
    p.add_argument("dir", type=Path)
    p.add_argument("--file", type=Path, required=True, metavar="SUB.yaml")
    p.set_defaults(func=cmd_subscription_add)
    p = subs.add_parser("list")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_subscription_list)
    p = subs.add_parser("show")
    p.add_argument("dir", type=Path)
    p.add_argument("id")
    p.set_defaults(func=cmd_subscription_show)

    p = sub.add_parser("publish", help="capture changes and write packages for every subscriber")
    p.add_argument("dir", type=Path)
    p.add_argument("--subscription", metavar="ID")
    p.add_argument("--snapshot", action="store_true", help="send a full snapshot instead of a delta")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("revoke", help="revoke a subscription (all or one agent): the agent must purge")
    p.add_argument("dir", type=Path)
    p.add_argument("--subscription", required=True, metavar="ID")
    p.add_argument("--agent", metavar="ID")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("reports", help="read every agent's outbox and show per-subscription state")
    p.add_argument("dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline-after", type=float, default=None, metavar="SECONDS")
    p.add_argument("--lag-after", type=float, default=600.0, metavar="SECONDS")
    p.set_defaults(func=cmd_reports)

    p = sub.add_parser("sftp-config", help="print the sshd_config Match blocks for every agent")
    p.add_argument("dir", type=Path)
    p.add_argument("--exchange-root", type=Path, help="exchange path as sshd sees it (default: DIR/exchange)")
    p.set_defaults(func=cmd_sftp_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from protocol.errors import ProtocolError

    parser = build_parser()
    args = parser.parse_args(argv)
    # Library logs (SQLAlchemy, paramiko) go through the agent's redacting pipeline too.
    configure_logging("info", "auto", stream=sys.stderr)
    try:
        code: int = args.func(args)
        return code
    except CatalogError as exc:
        print(f"edu-hub: invalid subscription:\n{exc}", file=sys.stderr)
        return USAGE
    except (RegistryError, HubError, SftpConfigError, ProtocolError, OSError) as exc:
        print(f"edu-hub: {exc}", file=sys.stderr)
        return FAILURE


if __name__ == "__main__":
    sys.exit(main())
