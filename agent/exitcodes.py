"""Process exit codes of `edu-agent` and `edu-hub` (listed in the README and in `--help`).

systemd and scripts act on them: 78 (EX_CONFIG from sysexits.h) tells the unit's
``ExecStartPre=`` config check apart from a runtime failure, and is what
``RestartPreventExitStatus=78`` keys on so a broken config is not restarted in a loop.
"""

OK = 0
FAILURE = 1  # the command ran and something failed (a database, a package, the platform)
USAGE = 2  # bad command line (argparse's own code)
CONFIG = 78  # EX_CONFIG: the configuration file is invalid
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

EPILOG = "exit codes: 0 ok, 1 failure, 2 usage error, 78 configuration error, 130 interrupted"
