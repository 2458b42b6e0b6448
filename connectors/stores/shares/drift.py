"""Drift: how a subscription directory differs from what the agent wrote there."""

from __future__ import annotations

import stat

from connectors.stores.shares import fsops
from connectors.stores.shares.errors import UnsafeDestinationError
from connectors.stores.shares.fileset import fileset_digest
from connectors.stores.shares.manifest import ManifestEntry
from connectors.stores.shares.paths import META_DIRNAME
from connectors.stores.shares.results import DriftItem, VerifyResult
from connectors.stores.shares.subscription import Subscription


def scan(sub: Subscription, *, rehash: bool) -> VerifyResult:
    """Compare a subscription directory with its index; rehash everything or only what moved."""
    index = {f.path: f for f in sub.state.files()}
    position = sub.state.position()
    drift: list[DriftItem] = []
    present: list[ManifestEntry] = []
    files = 0
    with fsops.DirTree(sub.fd) as tree:
        for found in fsops.walk(sub.fd, skip_top=frozenset({META_DIRNAME})):
            known = index.pop(found.path, None)
            if not stat.S_ISREG(found.mode):
                kind = "added" if known is None else "changed"
                drift.append(
                    DriftItem(found.path, kind, known.sha256 if known else None, fsops.describe(found.mode))
                )
                continue
            files += 1
            if (
                known is not None
                and not rehash
                and (found.size, found.ino, found.mtime_ns) == (known.size, known.ino, known.mtime_ns)
            ):
                present.append(known.entry())
                continue
            parent_fd, name = tree.parent_of(found.path, create=False)
            assert parent_fd is not None
            try:
                size, sha = fsops.hash_at(parent_fd, name)
            except (FileNotFoundError, UnsafeDestinationError):
                continue  # replaced while scanning; the next scan sees it
            present.append(ManifestEntry(found.path, size, sha))
            if known is None:
                drift.append(DriftItem(found.path, "added", None, sha))
            elif (size, sha) != (known.size, known.sha256):
                drift.append(DriftItem(found.path, "changed", known.sha256, sha))
    drift.extend(DriftItem(p, "missing", f.sha256, None) for p, f in sorted(index.items()))
    local = fileset_digest(present)
    expected = position.digest if position else fileset_digest([])
    return VerifyResult(sub.dirname, position, local, local == expected and not drift, drift, files)
