"""Per-subscription state inside ``<subscription>/.edu-sync/state.db`` (SQLite).

It holds the applied position (sequence, file-set digest, package id), the index
of the file set (path -> size, SHA-256, plus local inode/mtime for cheap drift
scans) and the apply journal. Keeping it beside the files means the data and
its position travel and commit together. SQLite reaches the database through
``/proc/self/fd/<metadata dir fd>`` so no path string is resolved through the
share again after the metadata directory was opened without following links.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from connectors.stores.shares.fileset import advance, fileset_lthash, summary_digest
from connectors.stores.shares.manifest import ManifestEntry
from protocol.digest import LtHash

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    ino INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS digest_state (id INTEGER PRIMARY KEY CHECK (id = 1), state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY CHECK (id = 1), package_id TEXT NOT NULL, phase TEXT NOT NULL,
    plan TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Position:
    """What a subscription directory holds: the last applied package and its file-set digest."""

    sequence: int
    digest: str
    package_id: str


@dataclass(frozen=True)
class IndexedFile:
    path: str
    size: int
    sha256: str
    ino: int
    mtime_ns: int

    def entry(self) -> ManifestEntry:
        return ManifestEntry(self.path, self.size, self.sha256)


@dataclass(frozen=True)
class Journal:
    package_id: str
    phase: str  # "staging" (roll back / resume) or "commit" (roll forward)
    plan: dict[str, Any]


class ShareState:
    """The state database of one subscription directory."""

    def __init__(self, meta_fd: int) -> None:
        # Create it 0600 without following a link; SQLite gives its -wal/-shm files the same mode.
        os.close(
            os.open("state.db", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=meta_fd)
        )
        self._db = sqlite3.connect(f"/proc/self/fd/{meta_fd}/state.db", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- position --------------------------------------------------------------------

    def position(self) -> Position | None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "sequence" not in rows:
            return None
        return Position(int(rows["sequence"]), rows["digest"], rows["package_id"])

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- index -----------------------------------------------------------------------

    def files(self) -> Iterator[IndexedFile]:
        for row in self._db.execute("SELECT path, size, sha256, ino, mtime_ns FROM files ORDER BY path"):
            yield IndexedFile(*row)

    def index(self) -> dict[str, ManifestEntry]:
        return {f.path: f.entry() for f in self.files()}

    def lookup(self, path: str) -> IndexedFile | None:
        row = self._db.execute(
            "SELECT path, size, sha256, ino, mtime_ns FROM files WHERE path = ?", (path,)
        ).fetchone()
        return None if row is None else IndexedFile(*row)

    def lookup_many(self, paths: Iterable[str]) -> dict[str, ManifestEntry]:
        found = {}
        for path in paths:
            item = self.lookup(path)
            if item is not None:
                found[path] = item.entry()
        return found

    def lthash(self) -> LtHash:
        """The digest state of the indexed set (rebuilt from the index if absent)."""
        row = self._db.execute("SELECT state FROM digest_state WHERE id = 1").fetchone()
        if row is not None:
            return LtHash.from_bytes(bytes(row[0]))
        return fileset_lthash(f.entry() for f in self.files())

    def update_stat(self, items: Iterable[tuple[str, int, int]]) -> None:
        """Record (path, inode, mtime_ns) of files as the agent wrote them."""
        with self.transaction():
            self._db.executemany(
                "UPDATE files SET ino = ?, mtime_ns = ? WHERE path = ?",
                [(ino, mt, p) for p, ino, mt in items],
            )

    # --- journal ---------------------------------------------------------------------

    def journal(self) -> Journal | None:
        row = self._db.execute("SELECT package_id, phase, plan FROM journal WHERE id = 1").fetchone()
        return None if row is None else Journal(row[0], row[1], json.loads(row[2]))

    def begin_staging(self, package_id: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM journal")
            self._db.execute(
                "INSERT INTO journal (id, package_id, phase, plan) VALUES (1, ?, 'staging', '{}')",
                (package_id,),
            )

    def commit_plan(self, package_id: str, plan: dict[str, Any]) -> None:
        """The commit point: from here on recovery rolls the package forward."""
        with self.transaction():
            self._db.execute("DELETE FROM journal")
            self._db.execute(
                "INSERT INTO journal (id, package_id, phase, plan) VALUES (1, ?, 'commit', ?)",
                (package_id, json.dumps(plan, ensure_ascii=False)),
            )

    def clear_journal(self) -> None:
        self._db.execute("DELETE FROM journal")

    def finish(self, plan: dict[str, Any], after: LtHash | None = None) -> None:
        """Make the index and position those of the committed plan, and drop the journal."""
        writes = [ManifestEntry(p, size, sha) for _, p, size, sha, *_ in plan["writes"]]
        with self.transaction():
            if after is None:  # recovery: recompute what apply had predicted
                touched = self.lookup_many([w.path for w in writes] + list(plan["removed"]))
                after = advance(self.lthash(), touched, writes, plan["removed"], snapshot=plan["snapshot"])
            self._db.execute(
                "INSERT OR REPLACE INTO digest_state (id, state) VALUES (1, ?)", (after.to_bytes(),)
            )
            if plan["snapshot"]:
                self._db.execute("DELETE FROM files")
            self._db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in plan["removed"]])
            self._db.executemany(
                "INSERT OR REPLACE INTO files (path, size, sha256, ino, mtime_ns) VALUES (?, ?, ?, ?, ?)",
                [(p, size, sha, ino, mtime_ns) for _, p, size, sha, ino, mtime_ns in plan["writes"]],
            )
            for key in ("sequence", "package_id"):
                self.set_meta(key, str(plan["position"][key]))
            self.set_meta("digest", summary_digest(after))
            self._db.execute("DELETE FROM journal")

    def transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
