"""Per-subscription publish state: what every subscriber has been sent, in one SQLite file.

``state/<subscription>.db`` holds the *published state* — the canonical rows (or the file set)
as of the last publish, which is exactly what every subscriber's copy must equal once it has
applied everything — plus the change cursor, the expected digest, each subscriber's sequence
and every package written. A publish run changes all of it inside one transaction and commits
only after its packages are complete in the spool; moving them into the inboxes is then a
replayable step (``pending`` → ``placed``). A run that dies before the commit leaves the state
untouched, so the next run computes the same change and the same sequence numbers again.

Late subscribers and resync requests get their snapshot from the published state, not from a
second scan of the source, so every subscriber of a subscription sees the same rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    key TEXT PRIMARY KEY,
    line TEXT NOT NULL,
    shash INTEGER,  -- the source database's own hash of the row (subscriptions without a cursor)
    -- the key as an integer when the primary key is one integer column ('"42"' -> 42)
    ikey INTEGER GENERATED ALWAYS AS (CAST(substr(key, 2, length(key) - 2) AS INTEGER)) VIRTUAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_ikey ON rows (ikey);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscribers (
    agent TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS packages (
    package_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    filename TEXT NOT NULL,
    directory TEXT NOT NULL,
    status TEXT NOT NULL,
    created TEXT NOT NULL,
    expected_digest TEXT,
    acked TEXT,
    UNIQUE (agent, sequence)
);
CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, agent TEXT NOT NULL, done TEXT NOT NULL);
"""



@contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on an autocommit connection, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

@dataclass(frozen=True)
class PackageRecord:
    package_id: str
    agent: str
    sequence: int
    kind: str
    filename: str
    directory: str  # "inbox" or "control"
    status: str  # pending (in spool, committed) | placed (in the inbox) | acked | pruned
    created: str
    expected_digest: str | None
    acked: str | None


class PublishState:
    """The state database of one subscription."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():  # holds subscribed rows in clear: owner only
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE also serialises concurrent publishers."""
        return immediate_transaction(self.db)

    # ------------------------------------------------------------------ meta
    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (key, json.dumps(value, sort_keys=True)),
        )

    def get_blob(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT v FROM blobs WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_blob(self, key: str, value: bytes) -> None:
        self.db.execute(
            "INSERT INTO blobs (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (key, value),
        )

    # ------------------------------------------------------------------ subscribers
    def sequences(self) -> dict[str, int]:
        rows = self.db.execute("SELECT agent, sequence FROM subscribers WHERE revoked = 0").fetchall()
        return {a: s for a, s in rows}

    def all_sequences(self) -> dict[str, tuple[int, bool]]:
        rows = self.db.execute("SELECT agent, sequence, revoked FROM subscribers").fetchall()
        return {a: (s, bool(r)) for a, s, r in rows}

    def set_sequence(self, agent: str, sequence: int, revoked: bool = False) -> None:
        self.db.execute(
            "INSERT INTO subscribers (agent, sequence, revoked) VALUES (?, ?, ?) "
            "ON CONFLICT (agent) DO UPDATE SET sequence = excluded.sequence, revoked = excluded.revoked",
            (agent, sequence, int(revoked)),
        )

    # ------------------------------------------------------------------ packages
    def add_package(self, record: PackageRecord) -> None:
        self.db.execute(
            "INSERT INTO packages (package_id, agent, sequence, kind, filename, directory, status, created,"
            " expected_digest, acked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.package_id,
                record.agent,
                record.sequence,
                record.kind,
                record.filename,
                record.directory,
                record.status,
                record.created,
                record.expected_digest,
                record.acked,
            ),
        )

    def packages(self, agent: str | None = None, status: str | None = None) -> list[PackageRecord]:
        sql = (
            "SELECT package_id, agent, sequence, kind, filename, directory, status, created, expected_digest,"
            " acked FROM packages WHERE 1=1"
        )
        args: list[Any] = []
        if agent is not None:
            sql += " AND agent = ?"
            args.append(agent)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        rows = self.db.execute(sql + " ORDER BY agent, sequence", args).fetchall()
        return [PackageRecord(*r) for r in rows]

    def set_status(self, package_id: str, status: str, acked: str | None = None) -> None:
        if acked is None:
            self.db.execute("UPDATE packages SET status = ? WHERE package_id = ?", (status, package_id))
        else:
            self.db.execute(
                "UPDATE packages SET status = ?, acked = ? WHERE package_id = ?", (status, acked, package_id)
            )

    # ------------------------------------------------------------------ requests
    def request_done(self, request_id: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone()
            is not None
        )

    def mark_request(self, request_id: str, agent: str, when: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO requests (request_id, agent, done) VALUES (?, ?, ?)",
            (request_id, agent, when),
        )
