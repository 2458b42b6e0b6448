"""Each test starts from, and leaves behind, the same global logging and structlog state.

Why: logging configuration is process-global. Many tests run ``agent.cli.main([...])`` or
``hub.cli.main([...])`` in-process, and those call ``configure_logging``: it sets logger levels,
installs a handler on the root logger bound to the stream of that moment, reconfigures
structlog and turns on ``logging.captureWarnings``. Without this fixture, whatever one test set
leaked into every later one, and a test's outcome depended on which tests ran before it
(e.g. a ``paramiko`` level of WARNING hid paramiko's DEBUG records from a later ``caplog``).

pytest adds and removes its own capture handlers on the root logger around every test phase;
those are left to pytest, everything else is put back as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from agent import logsetup


@dataclass(frozen=True)
class _LoggerState:
    level: int
    disabled: bool
    propagate: bool
    handlers: list[logging.Handler]
    filters: list[Any]

    @classmethod
    def of(cls, logger: logging.Logger) -> _LoggerState:
        return cls(
            logger.level, logger.disabled, logger.propagate, list(logger.handlers), list(logger.filters)
        )


def _is_pytest_handler(handler: logging.Handler) -> bool:
    """pytest's capture handlers: pytest installs and removes them per phase itself."""
    return type(handler).__module__.startswith("_pytest.")


def _capturing_warnings() -> bool:
    """Whether ``logging.captureWarnings(True)`` is in effect."""
    return logging._warnings_showwarning is not None  # type: ignore[attr-defined]


def _loggers() -> dict[str, logging.Logger]:
    return {
        name: logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }


@dataclass(frozen=True)
class _Snapshot:
    disable: int
    root: _LoggerState
    loggers: dict[str, _LoggerState]
    capturing_warnings: bool
    record_factory: Callable[..., logging.LogRecord]
    logger_class: type[logging.Logger]
    structlog_configured: bool
    structlog_config: dict[str, Any]
    contextvars: dict[str, Any]
    secrets: frozenset[str]

    @classmethod
    def take(cls) -> _Snapshot:
        structlog_config = structlog.get_config()
        structlog_config["processors"] = list(structlog_config["processors"])
        with logsetup._registered_lock:
            secrets = frozenset(logsetup._registered)
        return cls(
            disable=logging.root.manager.disable,
            root=_LoggerState.of(logging.root),
            loggers={name: _LoggerState.of(logger) for name, logger in _loggers().items()},
            capturing_warnings=_capturing_warnings(),
            record_factory=logging.getLogRecordFactory(),
            logger_class=logging.getLoggerClass(),
            structlog_configured=structlog.is_configured(),
            structlog_config=structlog_config,
            contextvars=structlog.contextvars.get_contextvars(),
            secrets=secrets,
        )

    def restore(self) -> None:
        self._restore_stdlib()
        self._restore_structlog()
        with logsetup._registered_lock:
            logsetup._registered.clear()
            logsetup._registered.update(self.secrets)

    def _restore_stdlib(self) -> None:
        logging.disable(self.disable)
        _restore_root(self.root)
        current = _loggers()
        for name, logger in current.items():
            state = self.loggers.get(name)
            if state is None:  # created during the test: back to a fresh logger's settings
                logger.setLevel(logging.NOTSET)
                logger.disabled = False
                logger.propagate = True
            else:
                logger.setLevel(state.level)
                logger.disabled = state.disabled
                logger.propagate = state.propagate
                logger.handlers[:] = state.handlers
                logger.filters[:] = state.filters
        if self.capturing_warnings != _capturing_warnings():
            logging.captureWarnings(self.capturing_warnings)
        logging.setLogRecordFactory(self.record_factory)
        logging.setLoggerClass(self.logger_class)
        logging.root.manager._clear_cache()  # type: ignore[attr-defined]

    def _restore_structlog(self) -> None:
        if self.structlog_configured:
            structlog.configure(**self.structlog_config)
        else:
            structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**self.contextvars)


def _restore_root(state: _LoggerState) -> None:
    root = logging.root
    for handler in [h for h in root.handlers if not _is_pytest_handler(h) and h not in state.handlers]:
        root.removeHandler(handler)
        handler.close()  # unregisters it from logging; a StreamHandler leaves its stream open
    for handler in state.handlers:
        if not _is_pytest_handler(handler) and handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(state.level)
    root.disabled = state.disabled
    root.filters[:] = state.filters


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    snapshot = _Snapshot.take()
    yield
    snapshot.restore()
