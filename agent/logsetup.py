"""Logging for the agent: one structlog pipeline for our own logs and for stdlib loggers.

Why this shape:
* Under systemd, stdout and stderr go to the journal. Each line is one JSON object prefixed
  with the sd-daemon(3) priority ``<N>``, so journald keeps the level (``journalctl -p err``
  works) and the JSON stays machine-readable. On a terminal, a readable console format.
* paramiko and SQLAlchemy log through stdlib ``logging``; their records go through the same
  formatter (structlog's ProcessorFormatter), so they get the same format and redaction.
* Redaction is the last step before rendering, for every record: passwords, tokens,
  private key material and any secret value the agent resolved never reach the log.
  SQL parameters are never logged: they are personal data of students and staff.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")

# sd-daemon(3) / syslog priorities.
PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}

REDACTED = "[REDACTED]"
_MIN_REGISTERED_SECRET = 4

_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:password|passwd|passphrase|pwd|secret|secrets|token|tokens|authorization|"
    r"cookie|apikey|credentials?)(?:$|[_\-.])"
    r"|private[_\-]?key|secret[_\-]?key|api[_\-]?key|key[_\-]?material|data[_\-]?key",
    re.IGNORECASE,
)
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.DOTALL)
# userinfo up to the *last* '@' of the token: raw passwords may contain '@', '/' or ':'.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):\S*@")
_ASSIGNED_SECRET = re.compile(
    r"""(\b(?:password|passwd|passphrase|pwd|secret|token|api_?key|access_token|refresh_token)\b"""
    r"""["']?\s*[:=]\s*)("[^"]*"|'[^']*'|\S+)""",  # unquoted: up to whitespace (over-mask, never leak)
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+")

_registered: set[str] = set()
_registered_lock = threading.Lock()
_HANDLER_MARK = "_edu_agent_handler"


def register_secret(value: str) -> None:
    """Mask this exact value wherever it appears in a log (called when a secret is resolved)."""
    if len(value) >= _MIN_REGISTERED_SECRET:
        with _registered_lock:
            _registered.add(value)


def redact_text(text: str) -> str:
    """Mask secrets inside free text (messages, exception texts, URLs, DSNs)."""
    text = _PEM_BLOCK.sub(lambda m: f"[REDACTED {m.group(1).strip()}]", text)
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    text = _ASSIGNED_SECRET.sub(r"\1***", text)
    text = _AUTH_HEADER.sub(r"\1 ***", text)
    with _registered_lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_value(value: Any, key: str | None = None) -> Any:
    """Redact one logged value; containers recursively, by key name and by content."""
    if key is not None and _SECRET_KEY.search(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, Mapping):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return redact_text(str(value))


def redact_event(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the redaction step, applied to every record."""
    return {k: v if k.startswith("_") else redact_value(v, k) for k, v in event_dict.items()}


class _LibraryFilter(logging.Filter):
    """Applied on our handler (not by setting the libraries' own logger levels, which would
    leak into anything else that listens to them):

    * paramiko below WARNING is per-connection chatter: shown only when debugging;
    * SQLAlchemy logs statement parameters as a separate record; they are personal data.
    """

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.debug and record.levelno < logging.WARNING and record.name.startswith("paramiko"):
            return False
        if record.name.startswith("sqlalchemy.engine") and isinstance(record.args, tuple):
            record.args = tuple(
                "[parameters not logged]" if type(arg).__name__ == "_repr_params" else arg
                for arg in record.args
            )
        return True


class JournalJSONRenderer:
    """One JSON object per line, prefixed with the journald priority ``<N>``."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(ensure_ascii=False)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method)).lower()
        rendered = self._json(logger, method, event_dict)
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return f"<{PRIORITY.get(level, 6)}>{text}"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Install the pipeline (again: safe to call on reload or per test).

    ``stream`` defaults to stdout; the CLI passes stderr so that stdout stays the command's
    own output (under systemd both streams reach the journal, where ``<N>`` sets the level).
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    out = sys.stdout if stream is None else stream
    as_json = fmt == "json" or (fmt == "auto" and not _isatty(out))
    renderer: Callable[[WrappedLogger, str, EventDict], str] = (
        JournalJSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=_isatty(out))
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    pre_chain: list[Processor] = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    debug = level == "debug"
    handler.addFilter(_LibraryFilter(debug))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # SQLAlchemy decides per connection whether to log every statement from its logger's
    # effective level, so that level itself is set: statements only when debugging.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO if debug else logging.WARNING)
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
