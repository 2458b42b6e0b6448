"""One module per `edu-agent` subcommand family; each exposes ``register(subparsers)``."""
