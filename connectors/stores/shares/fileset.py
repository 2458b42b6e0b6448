"""File-set digest: the table digest's additive construction over (path, size, SHA-256).

The construction is ``protocol.digest`` (bucketed lthash16): one item per file,
``protocol.digest.file_item(path, size, sha256)`` — keyed by the path, so a
mismatch between two summaries narrows to the buckets, and so to the files,
that differ. Being additive, the agent updates the digest from what a package
removes and adds, without rehashing the share.

In a manifest, ``base_digest``/``expected_digest`` are the summary's overall
``digest`` (hex); the header's ``expected_state`` carries the full summary
(with bucket hashes) of the set after apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from protocol import digest as _digest


class FileLike(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


_HEX = re.compile(r"^[0-9a-f]{64}$")


def _pairs(items: Iterable[FileLike]) -> tuple[list[bytes], list[bytes]]:
    keys: list[bytes] = []
    values: list[bytes] = []
    for item in items:
        key, value = _digest.file_item(item.path, item.size, item.sha256)
        keys.append(key)
        values.append(value)
    return keys, values


def fileset_lthash(items: Iterable[FileLike]) -> _digest.LtHash:
    result = _digest.LtHash()
    result.add(*_pairs(items))
    return result


def add_files(state: _digest.LtHash, items: Iterable[FileLike]) -> None:
    state.add(*_pairs(items))


def remove_files(state: _digest.LtHash, items: Iterable[FileLike]) -> None:
    state.remove(*_pairs(items))


def summary_digest(state: _digest.LtHash) -> str:
    digest: str = state.summary()["digest"]
    return digest


def fileset_digest(items: Iterable[FileLike]) -> str:
    """The hex digest of a whole file set (what manifests carry)."""
    return summary_digest(fileset_lthash(items))


def fileset_summary(items: Iterable[FileLike]) -> dict[str, Any]:
    """The full summary (with bucket hashes) the hub signs as ``expected_state``."""
    return fileset_lthash(items).summary()


def is_digest(value: object) -> bool:
    return isinstance(value, str) and bool(_HEX.match(value))


def check_summary(summary: Mapping[str, Any]) -> None:
    _digest.check_summary(summary)


def mismatched_files(
    paths: Iterable[str], local: Mapping[str, Any], expected: Mapping[str, Any]
) -> tuple[list[int], list[str]]:
    """(differing buckets, local paths in them). Files the platform has but we lack are in
    those buckets too; the daemon asks for the buckets' files to be resent."""
    buckets = set(_digest.mismatched_buckets(local, expected))
    if not buckets:
        return [], []
    named = [p for p in paths if _digest.bucket_of(_digest.file_item(p, 0, "")[0]) in buckets]
    return sorted(buckets), sorted(named)


def advance(
    state: _digest.LtHash,
    current: Mapping[str, FileLike],
    writes: Iterable[FileLike],
    removed: Iterable[str],
    *,
    snapshot: bool,
) -> _digest.LtHash:
    """The digest state after writing ``writes`` and deleting ``removed`` (a pure function)."""
    writes = list(writes)
    if snapshot:
        return fileset_lthash(writes)
    new = state.copy()
    remove_files(new, [current[p] for p in removed if p in current])
    remove_files(new, [current[w.path] for w in writes if w.path in current])
    add_files(new, writes)
    return new
