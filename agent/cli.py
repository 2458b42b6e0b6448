"""`edu-agent` command line: a thin dispatcher over one module per subcommand family."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__, exitcodes

# Each module in agent/commands/ defines ``register(subparsers)``, which adds its
# subcommand(s) and sets ``func(args) -> int`` as the parser default.
COMMAND_MODULES = (
    "config_cmd",
    "keys_cmd",
    "package_cmd",
    "run_cmd",
    "status_cmd",
    "verify_cmd",
    "demo_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edu-agent",
        description="Sync agent for the municipal education data platform (front-end machine).",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 78 configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"edu-agent {__version__}")
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
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    result: int = func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
