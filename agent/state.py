"""The agent's local state in its state directory: one SQLite file plus a lock.

What lives here: per subscription the last applied sequence (a mirror — for tables the
authoritative position commits with the data in the target database, and the daemon
re-reads it from the store before each run), last success and last error, the schedule's
last-run times, and quarantine records. ``edu-agent status`` reads it without the lock.
The lock (``fcntl.flock`` on ``agent.lock``) keeps a second daemon off the same state.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.reports import rfc3339

DB_NAME = "state.db"
LOCK_NAME = "agent.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscription (
    subscription_id TEXT PRIMARY KEY,
    kind TEXT,                      -- table | file
    target TEXT,                    -- where it maps to (for status), never a secret
    last_sequence INTEGER NOT NULL DEFAULT 0,
    last_package_id TEXT,
    published_sequence INTEGER,     -- highest sequence seen in the inbox
    local_digest TEXT,
    expected_digest TEXT,
    digest_match INTEGER,           -- 1 / 0 / NULL (unknown)
    mismatch TEXT,                  -- JSON list of buckets or files
    last_success REAL,
    last_error TEXT,
    last_error_at REAL,
    held_gap TEXT,                  -- JSON {"expected": n, "found": m} while a gap is held
    purged_at REAL,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS schedule (
    subscription_id TEXT PRIMARY KEY,
    last_attempt REAL,
    last_success REAL,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT,
    package_name TEXT NOT NULL UNIQUE,  -- inbox file name: never retried
    package_id TEXT,
    sequence INTEGER,
    reason TEXT NOT NULL,
    path TEXT NOT NULL,
    at REAL NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inbox_package (  -- packages seen in the inbox, until the hub prunes them
    package_id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    received_at REAL,
    acked TEXT                      -- receipt result sent: applied / skipped
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class StateLocked(RuntimeError):
    """Another agent process holds the state directory."""


@dataclass(frozen=True)
class ScheduleRecord:
    last_attempt: float | None
    last_success: float | None
    failures: int


class StateLock:
    """An exclusive, non-blocking ``flock`` on the state directory, held for the process' life."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"state directory {self.path.parent} is in use by another edu-agent (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> int | None:
        """The pid of the process holding the lock, or None when nobody holds it."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class State:
    """Typed access to ``state.db``; one instance per thread (SQLite connections are not shared)."""

    def __init__(self, state_dir: Path, readonly: bool = False) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no agent state at {self.path} (has the agent run yet?)")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        else:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- subscriptions ----------------------------------------------------------------------
    def _ensure(self, db: sqlite3.Connection, subscription_id: str) -> None:
        db.execute("INSERT OR IGNORE INTO subscription(subscription_id) VALUES (?)", (subscription_id,))

    def update_subscription(self, subscription_id: str, **fields: Any) -> None:
        allowed = {
            "kind", "target", "last_sequence", "last_package_id", "published_sequence", "local_digest",
            "expected_digest", "digest_match", "mismatch", "last_success", "last_error", "last_error_at",
            "held_gap", "purged_at",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown subscription state fields: {sorted(unknown)}")
        values = {k: json.dumps(v) if k in ("mismatch", "held_gap") and v is not None else v
                  for k, v in fields.items()}
        values["updated_at"] = time.time()
        columns = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            self._ensure(db, subscription_id)
            db.execute(f"UPDATE subscription SET {columns} WHERE subscription_id = ?",  # noqa: S608
                       (*values.values(), subscription_id))

    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM subscription WHERE subscription_id = ?",
                               (subscription_id,)).fetchone()
        return _decode(row) if row else None

    def subscriptions(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM subscription ORDER BY subscription_id").fetchall()
        return [_decode(r) for r in rows]

    def last_sequence(self, subscription_id: str) -> int:
        row = self._db.execute("SELECT last_sequence FROM subscription WHERE subscription_id = ?",
                               (subscription_id,)).fetchone()
        return int(row[0]) if row else 0

    def record_error(self, subscription_id: str, error: str) -> None:
        self.update_subscription(subscription_id, last_error=error, last_error_at=time.time())

    # -- schedule ---------------------------------------------------------------------------
    def schedule(self, subscription_id: str) -> ScheduleRecord:
        row = self._db.execute("SELECT last_attempt, last_success, failures FROM schedule "
                               "WHERE subscription_id = ?", (subscription_id,)).fetchone()
        if row is None:
            return ScheduleRecord(None, None, 0)
        return ScheduleRecord(row[0], row[1], int(row[2]))

    def save_schedule(self, subscription_id: str, record: ScheduleRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO schedule(subscription_id, last_attempt, last_success, failures) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(subscription_id) DO UPDATE SET "
                "last_attempt = excluded.last_attempt, last_success = excluded.last_success, "
                "failures = excluded.failures",
                (subscription_id, record.last_attempt, record.last_success, record.failures),
            )

    # -- quarantine -------------------------------------------------------------------------
    def add_quarantine(self, subscription_id: str | None, package_name: str, package_id: str | None,
                       sequence: int | None, reason: str, path: Path) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO quarantine"
                " (subscription_id, package_name, package_id, sequence, reason, path, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(package_name) DO UPDATE SET reason = excluded.reason",
                (subscription_id, package_name, package_id, sequence, reason, str(path), time.time()),
            )
            return int(cur.lastrowid or 0)

    def is_quarantined(self, package_name: str) -> bool:
        row = self._db.execute("SELECT 1 FROM quarantine WHERE package_name = ?", (package_name,)).fetchone()
        return row is not None

    def quarantined(self, subscription_id: str | None = None) -> list[dict[str, Any]]:
        if subscription_id is None:
            rows = self._db.execute("SELECT * FROM quarantine ORDER BY id").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM quarantine WHERE subscription_id = ? ORDER BY id",
                                    (subscription_id,)).fetchall()
        return [dict(r) for r in rows]

    # -- inbox packages ---------------------------------------------------------------------
    def mark_received(self, subscription_id: str, sequence: int, package_id: str) -> bool:
        """Record a package as received; False if it already was (a held package read again)."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO inbox_package(package_id, subscription_id, sequence, "
                             "received_at) VALUES (?, ?, ?, ?)", (package_id, subscription_id, sequence,
                                                                  time.time()))
            return cur.rowcount == 1

    def mark_acked(self, subscription_id: str, sequence: int, package_id: str, result: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO inbox_package(package_id, subscription_id, sequence, acked) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT(package_id) DO UPDATE SET acked = excluded.acked",
                       (package_id, subscription_id, sequence, result))

    def is_acked(self, package_id: str) -> bool:
        row = self._db.execute("SELECT acked FROM inbox_package WHERE package_id = ?",
                               (package_id,)).fetchone()
        return row is not None and row[0] is not None

    def forget_packages(self, subscription_id: str, still_in_inbox: set[str]) -> None:
        """Drop records of packages the hub has pruned from the inbox (keeps the table small)."""
        rows = self._db.execute("SELECT package_id FROM inbox_package WHERE subscription_id = ?",
                                (subscription_id,)).fetchall()
        gone = [(r[0],) for r in rows if r[0] not in still_in_inbox]
        if gone:
            with self._tx() as db:
                db.executemany("DELETE FROM inbox_package WHERE package_id = ?", gone)

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in ("mismatch", "held_gap"):
        if out.get(key):
            out[key] = json.loads(out[key])
    if out.get("digest_match") is not None:
        out["digest_match"] = bool(out["digest_match"])
    return out


def subscription_view(row: dict[str, Any]) -> dict[str, Any]:
    """One subscription as heartbeats and ``edu-agent status`` show it."""
    if row.get("purged_at") and not row.get("last_sequence"):
        state = "purged"
    elif row.get("held_gap"):
        state = "held"
    elif row.get("last_error") and (row.get("last_error_at") or 0) >= (row.get("last_success") or 0):
        state = "error"
    else:
        state = "ok"
    published = row.get("published_sequence")
    applied = row.get("last_sequence") or 0
    return {
        "subscription_id": row["subscription_id"],
        "kind": row.get("kind"),
        "target": row.get("target"),
        "applied_sequence": applied,
        "applied_package_id": row.get("last_package_id"),
        "published_sequence": published,
        "lag": None if published is None else max(0, published - applied),
        "local_digest": row.get("local_digest"),
        "expected_digest": row.get("expected_digest"),
        "digest_match": row.get("digest_match"),
        "mismatch": row.get("mismatch"),
        "state": state,
        "last_apply": rfc3339(row.get("last_success")),
        "last_success": rfc3339(row.get("last_success")),
        "held_gap": row.get("held_gap"),
        "error": None if state != "error" else {"code": "error", "message": row.get("last_error")},
        "last_error": row.get("last_error"),
        "last_error_at": rfc3339(row.get("last_error_at")),
    }
