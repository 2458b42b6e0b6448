"""`edu-agent config check -c FILE [--online]`: validate the configuration.

Offline (the default, and what the systemd unit runs before every start) it reads only
the file and the local files it names: it never opens a network connection. ``--online``
then tries each database (``SELECT 1``) and the platform connection and reports each.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agent import exitcodes
from agent.config import (
    AgentConfig,
    Database,
    SecretError,
    config_warnings,
    format_duration,
    format_size,
    load_config,
)

# Connect-timeout keyword of each DBAPI driver, so an unreachable database fails fast.
_CONNECT_TIMEOUT_ARG = {
    "postgresql": "connect_timeout",
    "mysql": "connect_timeout",
    "mariadb": "connect_timeout",
}


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser("config", help="check the configuration file")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate the configuration (exit 0, or 78 listing every error)",
        description="Validate the configuration file and every local file it names. "
        "Touches no network unless --online is given.",
    )
    add_config_option(check)
    check.add_argument(
        "--online", action="store_true", help="also connect to each database and the platform; report each"
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # a ConfigError is reported by the dispatcher (exit 78)
    print(f"{args.config}: valid")
    for line in summary(config):
        print(f"  {line}")
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    if not args.online:
        return exitcodes.OK
    results = [*check_databases(config), *check_platform(config)]
    print("online checks:")
    for result in results:
        print(f"  {'ok  ' if result.ok else 'FAIL'}  {result.item}: {result.detail}")
    return exitcodes.OK if all(r.ok for r in results) else exitcodes.FAILURE


def summary(config: AgentConfig) -> Iterator[str]:
    """A few lines an operator can compare with what they meant to configure."""
    agent, platform = config.agent, config.platform
    yield f"agent          {agent.id} (state {agent.state_dir}, keys {agent.keys_dir})"
    if platform.transport == "sftp":
        endpoint = platform.sftp
        where = f"sftp {endpoint.username}@{endpoint.host}:{endpoint.port}{endpoint.path}"
        where += f", host key {platform.host_key_fingerprint}"
    else:
        where = f"local directory {platform.local_dir}"
    yield f"platform       {where}, poll every {format_duration(platform.poll_interval)}"
    for name, database in config.targets.databases.items():
        source = database.password_source
        secret = f", password from {source.describe()}" if source else ""
        yield f"database       {name}: {database.dialect}{secret}"
    for name, share in config.targets.shares.items():
        yield f"share          {name}: {share.path} (files {share.file_mode:04o}, dirs {share.dir_mode:04o})"
    subs = config.subscriptions
    yield (
        f"subscriptions  default database {subs.default_database or '-'}, "
        f"default share {subs.default_share or '-'}, {len(subs.overrides)} override(s)"
    )
    yield (
        f"reporting      heartbeat every {format_duration(config.reporting.heartbeat_interval)}, "
        f"queue up to {format_size(config.reporting.max_queue_size)}"
    )
    metrics = config.metrics
    yield f"metrics        {'on ' + metrics.listen if metrics.enabled else 'off'}"
    yield f"logging        {config.logging.level}, {config.logging.format}; audit {config.audit_path}"


@dataclass(frozen=True)
class OnlineResult:
    item: str
    ok: bool
    detail: str


def check_databases(config: AgentConfig) -> Iterator[OnlineResult]:
    for name, database in config.targets.databases.items():
        yield _check_database(f"database {name}", database, config.platform.connect_timeout.total_seconds())


def _check_database(item: str, database: Database, timeout: float) -> OnlineResult:
    try:
        url = database.url_with_secret()
    except SecretError as exc:
        return OnlineResult(item, False, str(exc))
    timeout_arg = _CONNECT_TIMEOUT_ARG.get(url.get_backend_name())
    connect_args = {timeout_arg: max(1, int(timeout))} if timeout_arg else {}
    started = time.monotonic()
    try:
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    except (ImportError, sa.exc.ArgumentError) as exc:
        return OnlineResult(item, False, f"driver not usable: {exc}")
    try:
        with engine.connect() as conn:
            # SELECT 1, compiled for the dialect (Oracle and DM need FROM DUAL).
            conn.execute(sa.select(sa.literal_column("1"))).scalar_one()
    except sa.exc.DBAPIError as exc:
        text = str(exc.orig).strip()
        return OnlineResult(item, False, text.splitlines()[0] if text else type(exc.orig).__name__)
    except sa.exc.SQLAlchemyError as exc:
        return OnlineResult(item, False, str(exc).splitlines()[0])
    finally:
        engine.dispose()
    elapsed_ms = (time.monotonic() - started) * 1000
    return OnlineResult(item, True, f"SELECT 1 answered ({url.get_backend_name()}, {elapsed_ms:.0f} ms)")


def check_platform(config: AgentConfig) -> Iterator[OnlineResult]:
    """The platform connection through the real transport (never a stand-in)."""
    try:
        from connectors.transports import TransportError, open_transport
    except ImportError as exc:
        yield OnlineResult("platform", False, f"transport not available ({exc})")
        return
    try:
        with open_transport(config.platform) as transport:
            results = transport.check()
    except (TransportError, OSError) as exc:
        yield OnlineResult("platform", False, f"{exc}" if isinstance(exc, TransportError) else repr(exc))
        return
    for result in results:
        yield OnlineResult(f"platform {result.item}", result.ok, result.detail)
