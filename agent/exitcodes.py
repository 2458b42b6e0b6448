"""Process exit codes of `edu-agent` and `edu-hub` (documented in docs/operations.md)."""

OK = 0
FAILURE = 1
USAGE = 2
CONFIG = 78  # EX_CONFIG from sysexits.h
