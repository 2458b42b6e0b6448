"""`edu-agent` command line: a thin dispatcher over one module per subcommand family.

Each module in ``agent/commands/`` defines ``register(subparsers)``, which adds its
subcommand(s) and sets ``func(args) -> int`` as the parser default. The dispatcher owns
what every command shares: logging setup (on stderr, so stdout stays the command's own
output), the exit codes (see `agent.exitcodes`), and the reporting of configuration
errors (any `ConfigError` escaping a command exits 78 with every error listed).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import structlog

from agent import __version__, exitcodes
from agent.config import DEFAULT_CONFIG_PATH, ConfigError
from agent.logsetup import FORMATS, LEVELS, configure_logging

COMMAND_MODULES = (
    "config_cmd",
    "keys_cmd",
    "package_cmd",
    "run_cmd",
    "status_cmd",
    "verify_cmd",
    "demo_cmd",
    "audit_cmd",
    "resync_cmd",
    "enroll_cmd",
)

log = structlog.get_logger("agent.cli")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The ``-c/--config FILE`` option, the same for every command that reads the config."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=str(DEFAULT_CONFIG_PATH),
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edu-agent",
        description="Sync agent for the municipal education data platform (front-end machine).",
        epilog=exitcodes.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edu-agent {__version__}")
    parser.add_argument("--log-level", choices=LEVELS, help="log level (default: info, or the config's)")
    parser.add_argument(
        "--log-format", choices=FORMATS, help="log format (default: auto: JSON unless on a terminal)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"agent.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"agent.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else exitcodes.USAGE
    configure_logging(args.log_level or "info", args.log_format or "auto", stream=sys.stderr)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    try:
        result: int = func(args)
    except ConfigError as exc:
        print(format_config_errors(exc), file=sys.stderr)
        return exitcodes.CONFIG
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except Exception as exc:
        log.error("command.failed", command=args.command, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        return exitcodes.FAILURE
    return result


def format_config_errors(exc: ConfigError) -> str:
    """``FILE: N errors`` followed by one located error per line."""
    count = len(exc.errors)
    file = exc.errors[0].file if exc.errors else "config"
    lines = [f"{file}: {count} error{'s' if count != 1 else ''}"]
    lines.extend(f"  {error}" for error in exc.errors)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
