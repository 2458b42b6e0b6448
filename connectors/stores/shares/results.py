"""What the share store's operations return (for receipts, reports and status)."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.stores.shares.manifest import ManifestEntry
from connectors.stores.shares.state import Position


@dataclass
class ApplyResult:
    """What an apply did, for the receipt."""

    status: str  # "applied" or "already_applied"
    package_id: str
    sequence: int
    files_written: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    files_resumed: int = 0
    bytes_written: int = 0
    local_digest: str = ""
    expected_digest: str = ""
    match: bool = True
    mismatched_buckets: list[int] = field(default_factory=list)
    mismatched_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DriftItem:
    """A path whose local state differs from the index (``expected``/``found`` SHA-256 or None)."""

    path: str
    kind: str  # "changed", "missing", "added"
    expected: str | None
    found: str | None


@dataclass
class VerifyResult:
    dirname: str
    position: Position | None
    local_digest: str
    match: bool
    drift: list[DriftItem]
    files: int


@dataclass
class RepairResult:
    repaired: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    resend: list[str] = field(default_factory=list)


@dataclass
class PurgeResult:
    """Everything a revocation deleted, for the signed deletion receipt."""

    dirname: str
    existed: bool
    position: Position | None
    files: list[ManifestEntry]
    other_paths: list[str]


@dataclass
class RecoveryOutcome:
    dirname: str
    action: str  # "rolled_forward", "staging_kept", "clean"
    package_id: str | None
