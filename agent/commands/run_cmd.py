"""`edu-agent run -c FILE [--once]`: the daemon (systemd ``Type=notify``), or one pass for cron and tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.logsetup import configure_logging


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser(
        "run", help="run the sync daemon",
        description="Pull packages from the platform, apply them, report back. Under systemd it speaks "
        "the Type=notify protocol (READY, WATCHDOG, STATUS, STOPPING); SIGTERM finishes the current "
        "transaction and exits, SIGHUP reloads the configuration.")
    add_config_option(parser)
    parser.add_argument("--once", action="store_true",
                        help="do everything pending now and exit: 0 if all succeeded, 1 otherwise")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon, serve
    from agent.sync import load_runtime

    path = Path(args.config)
    config = load_config(path)  # a ConfigError: the dispatcher lists every error and exits 78
    if args.log_level is None or args.log_format is None:
        configure_logging(args.log_level or config.logging.level, args.log_format or config.logging.format,
                          stream=sys.stderr)
    return serve(Daemon(lambda: load_runtime(path)), once=args.once)
