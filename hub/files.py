"""Change capture for file subscriptions: new, changed and removed files of a source directory.

A scan compares each regular file's size and mtime with the published state; only files whose
size or mtime moved are hashed, and a file whose content hash is unchanged is not a change
(a ``touch`` sends nothing). Symlinks, devices and FIFOs are never followed or published.
While a package is written every file is hashed again as it streams: a file that changed
after the scan aborts the publish (re-run it) rather than ship bytes the manifest does not sign.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from connectors.stores.shares.errors import ShareError
from connectors.stores.shares.fileset import fileset_digest, fileset_summary
from connectors.stores.shares.manifest import (
    MAX_ENTRIES,
    Manifest,
    ManifestEntry,
    build_manifest,
    validate_manifest,
)
from hub.catalog import Subscription
from hub.state import PublishState
from protocol.digest import bucket_of, file_item

BLOCK = 1 << 20
MAX_ENTRIES_PER_PACKAGE = MAX_ENTRIES


class FileCaptureError(RuntimeError):
    """The source directory cannot be published as scanned."""


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` spans directories, ``*`` and ``?`` stay inside one path component."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def selected(path: str, include: list[str], exclude: list[str]) -> bool:
    return any(glob_regex(p).match(path) for p in include) and not any(
        glob_regex(p).match(path) for p in exclude
    )


def hash_file(path: Path) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        digest = hashlib.sha256()
        size = 0
        while block := handle.read(BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


@dataclass
class FilePart:
    """One package's worth of a change: its manifest and the set's summary after it."""

    manifest: Manifest
    summary: dict[str, Any]  # fileset_summary of the resulting set: the header's expected_state


def split_change(
    current: list[ManifestEntry], previous: list[ManifestEntry] | None, limit: int
) -> list[FilePart]:
    """The change from ``previous`` (None: a snapshot) to ``current`` as packages of at most
    ``limit`` entries or removals each (the agent refuses larger manifests).

    A delta removes first, then adds/changes files in path order; a large snapshot is a snapshot
    of the first ``limit`` files followed by deltas adding the rest. Every part carries the
    digest of the set after it, so the agent verifies each step.
    """
    whole = build_manifest(current, previous)
    if len(whole.entries) <= limit and len(whole.removed) <= limit:
        return [FilePart(whole, fileset_summary(current))]
    state = None if previous is None else {e.path: e for e in previous}
    parts: list[FilePart] = []
    if state is not None:
        for start in range(0, len(whole.removed), limit):
            gone = set(whole.removed[start : start + limit])
            after = {p: e for p, e in state.items() if p not in gone}
            parts.append(
                FilePart(build_manifest(after.values(), state.values()), fileset_summary(after.values()))
            )
            state = after
    for start in range(0, len(whole.entries), limit):
        after = dict(state or {})
        after.update((e.path, e) for e in whole.entries[start : start + limit])
        before = None if state is None else state.values()
        parts.append(FilePart(build_manifest(after.values(), before), fileset_summary(after.values())))
        state = after
    return parts


@dataclass
class FileChange:
    manifest: Manifest  # the whole change
    root: Path
    parts: list[FilePart]  # one package each, in order

    @property
    def empty(self) -> bool:
        return not self.manifest.is_snapshot and not self.manifest.entries and not self.manifest.removed

    def write_payload(self, writer: Any, manifest: Manifest) -> None:
        """The entries' contents in manifest order, each re-hashed while it streams."""
        for entry in manifest.entries:
            path = self.root / entry.path
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise FileCaptureError(f"{path}: cannot open for publishing: {exc}") from exc
            with os.fdopen(fd, "rb") as handle:
                digest = hashlib.sha256()
                size = 0
                while size < entry.size and (block := handle.read(min(BLOCK, entry.size - size))):
                    digest.update(block)
                    writer.write(block)
                    size += len(block)
                if size != entry.size or handle.read(1) or digest.hexdigest() != entry.sha256:
                    raise FileCaptureError(f"{path} changed while it was being published; run publish again")


class FileCapture:
    def __init__(self, subscription: Subscription, state: PublishState) -> None:
        self.sub = subscription
        self.source = subscription.file_source
        self.root = Path(self.source.directory)
        self.state = state

    def _published(self) -> dict[str, tuple[int, int, str]]:
        rows = self.state.db.execute("SELECT path, size, mtime_ns, sha256 FROM files")
        return {p: (s, m, h) for p, s, m, h in rows}

    def scan(self) -> Iterator[tuple[str, os.stat_result]]:
        if not self.root.is_dir():
            raise FileCaptureError(f"source directory {self.root} does not exist or is not a directory")
        for top, dirs, names in os.walk(self.root, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                full = Path(top) / name
                st = full.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue  # symlinks, devices, FIFOs are never published
                rel = full.relative_to(self.root).as_posix()
                if selected(rel, self.source.include, self.source.exclude):
                    yield rel, st

    def capture(self, *, snapshot: bool) -> FileChange:
        published = self._published()
        initialised = self.state.get("files_initialised") is not None
        current: list[ManifestEntry] = []
        rows: list[tuple[str, int, int, str]] = []
        for rel, st in self.scan():
            known = published.get(rel)
            if known is not None and known[0] == st.st_size and known[1] == st.st_mtime_ns:
                sha = known[2]
            else:
                size, sha = hash_file(self.root / rel)
                if size != st.st_size:
                    raise FileCaptureError(
                        f"{self.root / rel} changed while it was scanned; run publish again"
                    )
            current.append(ManifestEntry(rel, st.st_size, sha))
            rows.append((rel, st.st_size, st.st_mtime_ns, sha))
        previous = None
        if initialised and not snapshot:
            previous = [ManifestEntry(p, s, h) for p, (s, _m, h) in published.items()]
        parts = split_change(current, previous, MAX_ENTRIES_PER_PACKAGE)
        manifest = build_manifest(current, previous) if len(parts) > 1 else parts[0].manifest
        self.state.db.execute("DELETE FROM files")
        self.state.db.executemany(
            "INSERT INTO files (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)", rows
        )
        self.state.put("files_initialised", True)
        self.state.put("fileset_digest", manifest.expected_digest)
        return FileChange(manifest, self.root, parts)

    def named_from_state(self, paths: Iterable[str], buckets: Iterable[int]) -> FileChange | None:
        """Only the files a request names (a resend): a delta on the published set, rewriting them.

        Entries: every published file named in ``paths`` or whose path falls in one of
        ``buckets`` (``protocol.digest`` buckets of the file-set digest); base and expected digest
        are both the published set's, and nothing is removed. None — send a snapshot instead —
        when a named path is not published (the agent holds a file the platform does not, which
        only a snapshot removes safely: a delta removing a path the agent no longer has is
        refused) or the entries do not fit in one package.
        """
        published = {p: ManifestEntry(p, s, h) for p, (s, _m, h) in self._published().items()}
        named = set(paths)
        if not named <= published.keys():
            return None
        wanted = frozenset(buckets)
        if wanted:
            named.update(p for p in published if bucket_of(file_item(p, 0, "")[0]) in wanted)
        digest = fileset_digest(published.values())
        entries = tuple(published[p] for p in sorted(named))
        manifest = Manifest(entries, (), digest, digest, len(published))
        try:
            validate_manifest(manifest.to_json())
        except ShareError:
            return None
        return FileChange(manifest, self.root, [FilePart(manifest, fileset_summary(published.values()))])

    def snapshot_from_state(self) -> FileChange:
        entries = [ManifestEntry(p, s, h) for p, (s, _m, h) in self._published().items()]
        parts = split_change(entries, None, MAX_ENTRIES_PER_PACKAGE)
        return FileChange(build_manifest(entries, None), self.root, parts)
