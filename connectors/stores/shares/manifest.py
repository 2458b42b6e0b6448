"""The ``manifest`` section of a ``files`` package header, and the file-set rules.

Shared by the hub (which builds manifests from a directory scan) and the agent
(which validates them before writing anything). The payload carries no names:
it is the content of the manifest's entries concatenated in manifest order, the
sizes delimiting them, so no path can arrive that the signed header does not
list. See docs/shares.md for the JSON structure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.stores.shares.errors import (
    CountMismatchError,
    ManifestFormatError,
    PathConflictError,
    SizeLimitError,
    UnknownRemovedPathError,
    UnsupportedEntryTypeError,
)
from connectors.stores.shares.fileset import fileset_digest, is_digest
from connectors.stores.shares.paths import check_collisions, validate_path

MANIFEST_FORMAT = "edu-files-manifest/1"
MAX_ENTRIES = 100_000  # per package; the hub splits larger changes over several packages
MAX_FILE_SIZE = 1 << 40  # 1 TiB
_MANIFEST_KEYS = frozenset({"format", "base_digest", "expected_digest", "file_count", "entries", "removed"})
_ENTRY_KEYS = frozenset({"path", "type", "size", "sha256"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ManifestEntry:
    """One regular file: where it goes, how long it is, what it hashes to."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "type": "file", "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``base_digest`` None means a full snapshot of the set."""

    entries: tuple[ManifestEntry, ...]
    removed: tuple[str, ...]
    base_digest: str | None
    expected_digest: str
    file_count: int

    @property
    def is_snapshot(self) -> bool:
        return self.base_digest is None

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "base_digest": self.base_digest,
            "expected_digest": self.expected_digest,
            "file_count": self.file_count,
            "entries": [e.to_json() for e in self.entries],
            "removed": list(self.removed),
        }


def _int(value: object, what: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestFormatError(f"{what}: expected an integer, got {type(value).__name__}")
    if value < 0 or value > limit:
        raise SizeLimitError(f"{what}: {value} is outside 0..{limit}")
    return value


def validate_entry(raw: object, index: int = 0) -> ManifestEntry:
    """One entry: a regular file with a safe path, a size within limits and a SHA-256."""
    if not isinstance(raw, Mapping):
        raise ManifestFormatError(f"entries[{index}]: expected an object")
    path = raw.get("path")
    entry_type = raw.get("type")
    if entry_type != "file":
        raise UnsupportedEntryTypeError(str(path), entry_type)
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise ManifestFormatError(f"entries[{index}] ({path!r}): unknown keys {sorted(unknown)}")
    checked = validate_path(path)
    size = _int(raw.get("size"), f"entries[{index}].size ({checked!r})", MAX_FILE_SIZE)
    sha = raw.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise ManifestFormatError(f"entries[{index}].sha256 ({checked!r}): expected 64 lowercase hex digits")
    return ManifestEntry(checked, size, sha)


def _digest_field(raw: Mapping[str, Any], key: str, allow_none: bool) -> str | None:
    value = raw.get(key)
    if value is None and allow_none:
        return None
    if not is_digest(value):
        raise ManifestFormatError(f"{key}: expected a file-set digest (hex), got {value!r}")
    assert isinstance(value, str)
    return value


def validate_manifest(raw: object) -> Manifest:
    """Parse and check everything that the manifest alone determines; raise a specific error."""
    if not isinstance(raw, Mapping):
        raise ManifestFormatError("manifest: expected an object")
    unknown = set(raw) - _MANIFEST_KEYS
    missing = _MANIFEST_KEYS - set(raw)
    if unknown or missing:
        raise ManifestFormatError(f"manifest: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if raw["format"] != MANIFEST_FORMAT:
        raise ManifestFormatError(f"manifest: format {raw['format']!r}, expected {MANIFEST_FORMAT!r}")
    raw_entries, raw_removed = raw["entries"], raw["removed"]
    if not isinstance(raw_entries, list) or not isinstance(raw_removed, list):
        raise ManifestFormatError("manifest: entries and removed must be lists")
    if len(raw_entries) > MAX_ENTRIES or len(raw_removed) > MAX_ENTRIES:
        raise SizeLimitError(f"manifest: more than {MAX_ENTRIES} entries or removed paths")
    entries = tuple(validate_entry(e, i) for i, e in enumerate(raw_entries))
    removed = tuple(validate_path(p) for p in raw_removed)
    check_collisions(e.path for e in entries)
    check_collisions(removed)
    written = {e.path for e in entries}
    for path in removed:
        if path in written:
            raise PathConflictError(path, "listed as both written and removed")
    base = _digest_field(raw, "base_digest", allow_none=True)
    expected = _digest_field(raw, "expected_digest", allow_none=False)
    assert expected is not None
    file_count = _int(raw["file_count"], "file_count", 1 << 62)
    if base is None:
        if removed:
            raise ManifestFormatError("manifest: a snapshot (base_digest null) lists no removed paths")
        if file_count != len(entries):
            raise CountMismatchError(f"snapshot file_count {file_count} != {len(entries)} entries")
    return Manifest(entries, removed, base, expected, file_count)


def resulting_set(current: Mapping[str, ManifestEntry], manifest: Manifest) -> dict[str, ManifestEntry]:
    """The file set after applying ``manifest`` to ``current``, checked against the local set.

    Raises if a removed path is unknown, if a new name collides with a kept one
    under case folding or normalisation, or if the count disagrees.
    """
    if manifest.is_snapshot:
        result: dict[str, ManifestEntry] = {}
    else:
        result = dict(current)
        for path in manifest.removed:
            if path not in result:
                raise UnknownRemovedPathError(path)
            del result[path]
    result.update((e.path, e) for e in manifest.entries)
    check_collisions(result)
    if len(result) != manifest.file_count:
        raise CountMismatchError(f"file_count {manifest.file_count}, resulting set has {len(result)} files")
    return result


def build_manifest(
    current: Iterable[ManifestEntry], previous: Iterable[ManifestEntry] | None = None
) -> Manifest:
    """Hub side: the manifest taking ``previous`` to ``current`` (a snapshot when ``previous`` is None).

    Entries (new or changed files) are sorted by path: the payload is their
    contents in this order.
    """
    now = {validate_path(e.path): e for e in current}
    check_collisions(now)
    if previous is None:
        entries = sorted(now.values(), key=lambda e: e.path)
        removed: list[str] = []
        base = None
    else:
        before = {e.path: e for e in previous}
        entries = sorted((e for p, e in now.items() if before.get(p) != e), key=lambda e: e.path)
        removed = sorted(p for p in before if p not in now)
        base = fileset_digest(before.values())
    for entry in entries:
        validate_entry(entry.to_json())
    return Manifest(tuple(entries), tuple(removed), base, fileset_digest(now.values()), len(now))


def split_manifest(
    manifest: Manifest, previous: Iterable[ManifestEntry] | None, max_bytes: int
) -> list[Manifest]:
    """Hub side: ``manifest`` as a chain of manifests each at most ``max_bytes`` of JSON.

    A package header caps its manifest (``protocol.header.MAX_MANIFEST_BYTES``), so a large
    change goes out as consecutive packages, each a delta on the one before (the first
    keeps the original's base, or is a smaller snapshot). Removals travel in the first
    link; every link carries the exact digest and count of the set after it.
    """
    state = {e.path: e for e in previous} if previous is not None and not manifest.is_snapshot else {}
    links: list[Manifest] = []
    base = manifest.base_digest
    removed = manifest.removed
    entries = manifest.entries
    at = 0
    while True:
        for path in removed:
            state.pop(path, None)
        chunk: list[ManifestEntry] = []
        size = len(json.dumps(Manifest((), removed, base, "0" * 64, 0).to_json()))
        while at < len(entries):
            cost = len(json.dumps(entries[at].to_json())) + 2
            if chunk and size + cost > max_bytes:
                break
            size += cost
            chunk.append(entries[at])
            at += 1
        if size > max_bytes:
            raise SizeLimitError(f"a manifest link needs {size} bytes, more than {max_bytes}")
        state.update((e.path, e) for e in chunk)
        link = Manifest(tuple(chunk), removed, base, fileset_digest(state.values()), len(state))
        links.append(link)
        if at == len(entries):
            return links
        base, removed = link.expected_digest, ()
