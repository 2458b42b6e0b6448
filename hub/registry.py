"""The hub's registry: a SQLite database of agents and subscriptions under the hub directory.

Layout of a hub directory (created by ``edu-hub init``)::

    hub.db              registry (this module)
    keys/               the platform's signing and encryption keys (0700, files 0600)
    exchange/<agent>/   inbox/ outbox/ control/ — what agents read and write
    state/<sub>.db      per-subscription publish state (hub/capture.py, hub/publish.py)
    spool/              packages being written, moved into inboxes once committed
    sshd/authorized_keys/edu-<agent>   agents' SSH keys (see hub/sftp.py)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.catalog import CatalogError, Subscription, parse_subscription
from hub.sftp import check_agent_id, system_user
from hub.state import immediate_transaction
from protocol.package import DEFAULT_SUITE, SUPPORTED_SUITES

#: Suites other than the default, per agent (added after the first hubs: created on open too).
AGENT_SUITES = """
CREATE TABLE IF NOT EXISTS agent_suites (
    agent TEXT PRIMARY KEY,
    suite TEXT NOT NULL
)"""
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    bundle TEXT NOT NULL,
    ssh_key TEXT,
    added TEXT NOT NULL
);
{AGENT_SUITES};
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    source_file TEXT NOT NULL,
    document TEXT NOT NULL,
    added TEXT NOT NULL,
    updated TEXT NOT NULL
);
"""


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown agent, hub not initialised, ...)."""


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class AgentRecord:
    id: str
    bundle: dict[str, Any]
    ssh_key: str | None
    added: str


class Registry:
    """Agents and subscriptions of one hub directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        db = self.root / "hub.db"
        if not db.exists():
            raise RegistryError(
                f"{self.root} is not a hub directory (no hub.db): run `edu-hub init {self.root}`"
            )
        self.db = sqlite3.connect(db, isolation_level=None)
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.execute(AGENT_SUITES)

    @classmethod
    def create(cls, root: Path) -> Registry:
        root = Path(root)
        (root / "exchange").mkdir(parents=True, exist_ok=True)
        for private in ("state", "spool"):  # published rows and plaintext spools: the hub's eyes only
            (root / private).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root / private, 0o700)
        db = sqlite3.connect(root / "hub.db", isolation_level=None)
        db.executescript(SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        db.close()
        return cls(root)

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self.db)

    # ------------------------------------------------------------------ paths
    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def exchange_dir(self) -> Path:
        return self.root / "exchange"

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def authorized_keys_dir(self) -> Path:
        return self.root / "sshd" / "authorized_keys"

    def state_path(self, subscription_id: str) -> Path:
        return self.root / "state" / f"{subscription_id}.db"

    # ------------------------------------------------------------------ agents
    def add_agent(self, agent_id: str, bundle: dict[str, Any], ssh_key: str | None) -> AgentRecord:
        check_agent_id(agent_id)
        record = AgentRecord(agent_id, bundle, ssh_key, now_utc())
        try:
            self.db.execute(
                "INSERT INTO agents (id, bundle, ssh_key, added) VALUES (?, ?, ?, ?)",
                (agent_id, json.dumps(bundle, sort_keys=True), ssh_key, record.added),
            )
        except sqlite3.IntegrityError:
            raise RegistryError(f"agent {agent_id!r} is already registered (remove it first)") from None
        return record

    def agents(self) -> list[AgentRecord]:
        rows = self.db.execute("SELECT id, bundle, ssh_key, added FROM agents ORDER BY id").fetchall()
        return [AgentRecord(r[0], json.loads(r[1]), r[2], r[3]) for r in rows]

    def agent(self, agent_id: str) -> AgentRecord:
        for record in self.agents():
            if record.id == agent_id:
                return record
        raise RegistryError(f"unknown agent {agent_id!r} (see `edu-hub agent list`)")

    def remove_agent(self, agent_id: str) -> None:
        self.agent(agent_id)
        using = [s.id for s in self.subscriptions() if any(x.agent == agent_id for x in s.subscribers)]
        if using:
            raise RegistryError(
                f"agent {agent_id!r} still subscribes to {', '.join(using)}: revoke and update those first"
            )
        self.db.execute("DELETE FROM agents WHERE id = ?", (agent_id,))
        self.db.execute("DELETE FROM agent_suites WHERE agent = ?", (agent_id,))
        # Removing an agent ends its SFTP access; its exchange directory stays for the record.
        (self.authorized_keys_dir / system_user(agent_id)).unlink(missing_ok=True)

    def agent_suite(self, agent_id: str) -> str:
        """The crypto suite of packages for this agent: the writers' default unless set."""
        row = self.db.execute("SELECT suite FROM agent_suites WHERE agent = ?", (agent_id,)).fetchone()
        return DEFAULT_SUITE if row is None else str(row[0])

    def set_agent_suite(self, agent_id: str, suite: str) -> None:
        """Pin an agent to a suite (SUITE_V1 for an agent that predates the default); the
        default suite removes the pin, so the agent follows the default from then on."""
        self.agent(agent_id)
        if suite not in SUPPORTED_SUITES:
            raise RegistryError(f"suite {suite!r} is not one of {', '.join(sorted(SUPPORTED_SUITES))}")
        with self.transaction() as db:
            db.execute("DELETE FROM agent_suites WHERE agent = ?", (agent_id,))
            if suite != DEFAULT_SUITE:
                db.execute("INSERT INTO agent_suites (agent, suite) VALUES (?, ?)", (agent_id, suite))

    # ------------------------------------------------------------------ subscriptions
    def put_subscription(self, document: str, source_file: str) -> tuple[Subscription, bool]:
        """Validate and store (insert or replace); returns the subscription and whether it is new."""
        sub = parse_subscription(document, source_file)
        known = {a.id for a in self.agents()}
        for s in sub.subscribers:
            if s.agent not in known:
                raise CatalogError(f"{source_file}: subscribers: agent {s.agent!r} is not registered")
        stamp = now_utc()
        with self.transaction() as db:
            existing = db.execute("SELECT 1 FROM subscriptions WHERE id = ?", (sub.id,)).fetchone()
            if existing:
                db.execute(
                    "UPDATE subscriptions SET source_file = ?, document = ?, updated = ? WHERE id = ?",
                    (source_file, document, stamp, sub.id),
                )
            else:
                db.execute(
                    "INSERT INTO subscriptions (id, source_file, document, added, updated)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (sub.id, source_file, document, stamp, stamp),
                )
        return sub, not existing

    def subscriptions(self) -> list[Subscription]:
        rows = self.db.execute("SELECT document, source_file FROM subscriptions ORDER BY id").fetchall()
        return [parse_subscription(doc, src) for doc, src in rows]

    def subscription(self, subscription_id: str) -> Subscription:
        row = self.db.execute(
            "SELECT document, source_file FROM subscriptions WHERE id = ?", (subscription_id,)
        ).fetchone()
        if row is None:
            raise RegistryError(f"unknown subscription {subscription_id!r} (see `edu-hub subscription list`)")
        return parse_subscription(row[0], row[1])
