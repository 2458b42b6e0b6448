"""edu-sync-agent: the daemon on an institution's front-end machine (前置机)."""

__version__ = "0.1.0"
