"""The daemon's view of the stores in ``connectors/stores``, and the adapters to them.

The daemon sees every store through :class:`StoreAdapter` (position, apply, purge, verify,
free space); the adapters below translate the table and share stores' own result types and
map their "the package is bad" errors to :class:`StoreRejected` (quarantine), leaving
environment errors (database down, disk full) to propagate (report, retry later).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from agent.config import AgentConfig, DirectoryTarget, TableTarget, Target
from agent.reports import error_code
from agent.subscription_list import SubscriptionEntry
from protocol.header import PackageHeader


@dataclass(frozen=True)
class Position:
    sequence: int
    digest: str | None = None
    package_id: str | None = None
    revoked: bool = False  # the store keeps a tombstone after a revocation


@dataclass
class Applied:
    """What a store reports after handling one package (docs/hub.md apply_receipt fields)."""

    result: str  # applied | skipped (already applied, or revoked: nothing applied) | held
    rows_upserted: int = 0
    rows_deleted: int = 0
    files: int = 0
    local_digest: str | None = None
    expected_digest: str | None = None
    digest_match: bool | None = None
    mismatched_buckets: list[int] = field(default_factory=list)
    mismatched_files: list[str] = field(default_factory=list)
    detail: str = ""


@dataclass
class Purged:
    target: str
    rows: int = 0
    files: int = 0


@dataclass
class Verified:
    ok: bool
    local_digest: str | None
    expected_digest: str | None
    mismatched_buckets: list[int] = field(default_factory=list)
    mismatched_files: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Repaired:
    """What undoing local drift did: restored from the cache, extra entries removed, to resend."""

    repaired: list[str]
    removed: list[str]
    resend: list[str]


class StoreRejected(Exception):
    """The store refused the package's content (schema, validation, unsafe path): quarantine it."""

    def __init__(self, message: str, code: str = "rejected", origin: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.origin = origin or type(self).__name__  # the store's own error class, for the reason


class StoreAdapter(Protocol):
    """The daemon's view of one subscription's local target (a table or a share subdirectory)."""

    kind: str  # "table" | "file"
    target: str  # for status and receipts: "<database>:<table>" or "<share>:<dir>"

    def position(self) -> Position: ...

    def apply(self, header: PackageHeader, plaintext: BinaryIO) -> Applied: ...

    def purge(self) -> Purged: ...

    def verify(self) -> Verified: ...

    def free_bytes(self) -> int | None: ...

    def close(self) -> None: ...


StoreFactory = Callable[[Target, SubscriptionEntry, AgentConfig], StoreAdapter]
"""Opens the store for a resolved target (agent/stores.py: tables or shares)."""


def _code(exc: BaseException) -> str:
    return error_code(exc)


class ShareAdapter:
    """A file subscription: one subdirectory of a share (connectors.stores.shares.ShareStore)."""

    kind = "file"

    def __init__(self, target: DirectoryTarget, entry: SubscriptionEntry, recover: bool = True) -> None:
        from connectors.stores.shares.store import ShareModes, ShareStore

        share = target.share
        self.dirname = target.directory or entry.target_name or entry.subscription_id
        self.root = share.path
        self.target = f"{target.share_name}:{self.dirname}"
        self._watcher: Any = None
        self.store = ShareStore(share.path, ShareModes(file_mode=share.file_mode, dir_mode=share.dir_mode),
                                owner=share.owner, group=share.group, cache_dir=share.verified_cache,
                                space_margin=share.free_space_margin)
        if recover and share.path.is_dir():
            self.store.recover(self.dirname)

    def position(self) -> Position:
        pos = self.store.position(self.dirname)
        return Position(0) if pos is None else Position(pos.sequence, pos.digest, pos.package_id)

    def apply(self, header: PackageHeader, plaintext: BinaryIO) -> Applied:
        from connectors.stores.shares.errors import PackageRejected

        try:
            result = self.store.apply(header, plaintext, self.dirname)
        except PackageRejected as exc:
            raise StoreRejected(str(exc), _code(exc), type(exc).__name__) from exc
        return Applied(
            result="skipped" if result.status == "already_applied" else "applied",
            files=result.files_written + result.files_removed,
            local_digest=result.local_digest or None, expected_digest=result.expected_digest or None,
            digest_match=result.match, mismatched_buckets=list(result.mismatched_buckets),
            mismatched_files=list(result.mismatched_files))

    def purge(self) -> Purged:
        result = self.store.purge(self.dirname)
        return Purged(self.target, files=len(result.files))

    def verify(self) -> Verified:
        result = self.store.verify(self.dirname)
        expected = result.position.digest if result.position is not None else None
        drift = [{"path": d.path, "kind": d.kind, "expected": d.expected, "found": d.found}
                 for d in result.drift]
        return Verified(ok=result.match and not result.drift, local_digest=result.local_digest,
                        expected_digest=expected, mismatched_files=[d.path for d in result.drift],
                        detail={"files": result.files, "drift": drift})

    def watch(self, on_drift: Callable[[Any], None]) -> str:
        """Start watching the subscription directory for local changes; returns the mode in use."""
        from connectors.stores.shares.watch import DriftWatcher

        if self._watcher is None:
            self._watcher = DriftWatcher(self.store, self.dirname, on_drift)
            self._watcher.start()
        return f"{self._watcher.mode}: {self._watcher.reason}"

    def repair(self, drift: list[Any]) -> Repaired:
        """Undo local drift: from the verified cache where possible, else name files to resend."""
        result = self.store.repair(self.dirname, drift)
        return Repaired(list(result.repaired), list(result.removed), list(result.resend))

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


def open_store(target: Target, entry: SubscriptionEntry, config: AgentConfig,
               recover: bool = True) -> StoreAdapter:
    """The adapter for a resolved target (the daemon's ``StoreFactory``).

    ``recover`` finishes interrupted applies first — only the daemon (which holds the state
    lock) does that; ``edu-agent verify`` running beside it must not.
    """
    if isinstance(target, DirectoryTarget):
        return ShareAdapter(target, entry, recover)
    if isinstance(target, TableTarget):
        return TableAdapter(target, entry, recover)
    raise TypeError(f"unknown target type {type(target).__name__}")


class TableAdapter:
    """A table subscription: one table in a target database (connectors.stores.tables.TableStore)."""

    kind = "table"

    def __init__(self, target: TableTarget, entry: SubscriptionEntry, recover: bool = True) -> None:
        from connectors.stores.tables import TableStore

        self.subscription_id = entry.subscription_id
        # local override, else the name the platform declares for this agent, else the subscription id
        self.table = target.table or entry.target_name or entry.subscription_id
        self.target = f"{target.database_name}:{self.table}"
        self.store = TableStore(target.database.url_with_secret())
        if recover:
            self.store.recover(self.subscription_id)

    def position(self) -> Position:
        pos = self.store.position(self.subscription_id)
        if pos is None:
            return Position(0)
        return Position(pos.sequence, _hex(pos.digest), pos.package_id, revoked=pos.revoked)

    def apply(self, header: PackageHeader, plaintext: BinaryIO) -> Applied:
        from connectors.stores.tables import PackageRejected

        try:
            result = self.store.apply(header, plaintext, self.table)
        except PackageRejected as exc:
            raise StoreRejected(str(exc), _code(exc), type(exc).__name__) from exc
        if result.status == "revoked":
            # A revocation: the store keeps only a tombstone. Nothing was applied; the purge has its
            # own deletion receipt, so this package is acknowledged as skipped and claims no rows.
            purged = f"subscription revoked ({result.rows_deleted} rows purged); nothing applied"
            return Applied(result="skipped", detail=purged)
        if result.status not in ("applied", "skipped", "held"):
            # never default to "applied": an outcome we do not know is a bug, not a success
            raise RuntimeError(f"table store returned an unknown outcome {result.status!r}")
        return Applied(result=result.status, rows_upserted=result.rows_upserted,
                       rows_deleted=result.rows_deleted, local_digest=_hex(result.local_digest),
                       expected_digest=_hex(result.expected_digest),
                       digest_match=result.match, mismatched_buckets=list(result.mismatched_buckets),
                       detail=result.reason)

    def purge(self) -> Purged:
        result = self.store.purge(self.subscription_id)
        return Purged(self.target, rows=result.rows_deleted)

    def verify(self) -> Verified:
        result = self.store.verify(self.subscription_id)
        ok = result.match and result.matches_expected is not False
        buckets = list(result.mismatched_buckets)
        if not buckets and result.matches_expected is False and result.expected_digest is not None:
            from protocol.digest import mismatched_buckets

            buckets = mismatched_buckets(result.local_digest, result.expected_digest)
        return Verified(ok=ok, local_digest=_hex(result.local_digest),
                        expected_digest=_hex(result.expected_digest or result.recorded_digest),
                        mismatched_buckets=buckets,
                        detail={"rows": result.rows, "matches_recorded": result.match,
                                "matches_expected": result.matches_expected})

    def free_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        self.store.close()


def _hex(summary: Any) -> str | None:
    """The hex digest of a ``protocol.digest`` summary (or a bare hex string)."""
    if summary is None:
        return None
    if isinstance(summary, str):
        return summary
    digest = summary.get("digest") if isinstance(summary, dict) else None
    return digest if isinstance(digest, str) else None
