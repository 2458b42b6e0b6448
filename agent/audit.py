"""Append-only, hash-chained audit trail (审计跟踪), separate from the operational log.

One JSON object per line. Each entry carries ``seq`` (1, 2, ...), ``prev`` (the previous
entry's hash; 64 zeros for the first) and ``hash`` = SHA-256 over the canonical JSON of the
entry without ``hash``. Every append is fsync'd before the caller goes on. Editing an
entry breaks its hash, deleting one breaks the next ``prev``/``seq``, and truncating the tail
is caught against a known head: the local ``audit.log.head`` file, or the head the platform
received in heartbeats (``edu-agent audit verify --expect-head SEQ:HASH``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GENESIS = "0" * 64

# The events the agent records; anything else is a programming error.
EVENTS = frozenset(
    {
        "agent.start",
        "agent.stop",
        "package.received",
        "package.applied",
        "package.skipped",
        "package.rejected",
        "package.quarantined",
        "package.held",
        "subscription.purged",
        "subscription.unmapped",
        "config.loaded",
        "config.reloaded",
        "config.reload_rejected",
        "keys.loaded",
        "keys.changed",
        "resync.requested",
        "digest.mismatch",
        "verify.run",
        "drift.detected",
    }
)


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        seq, _, digest = text.strip().partition(":")
        if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"audit head must look like SEQ:SHA256HEX, got {text!r}")
        return cls(int(seq), digest)


EMPTY_HEAD = Head(0, GENESIS)


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def head_path_for(log_path: Path) -> Path:
    """Where the last known head is kept, beside the log (``audit.log`` -> ``audit.log.head``)."""
    return log_path.with_name(log_path.name + ".head")


class AuditTrail:
    """Appends entries to the audit log file (``audit.path``, default ``<state_dir>/audit.log``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.head_path = head_path_for(path)
        self._head: Head | None = None

    def head(self) -> Head:
        if self._head is None:
            self._head = _last_head(self.path)
        return self._head

    def record(self, event: str, **fields: Any) -> Head:
        """Append one entry (fsync'd) and return the new head."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._head = _last_head(self.path)  # another process (a CLI command) may have appended
            entry: dict[str, Any] = {
                "seq": self._head.seq + 1,
                "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "event": event,
                **fields,
                "prev": self._head.hash,
            }
            entry["hash"] = entry_hash(entry)
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            os.write(fd, line.encode())
            os.fsync(fd)
            self._head = Head(entry["seq"], entry["hash"])
            _write_head(self.head_path, self._head)
        finally:
            os.close(fd)
        return self._head


def _write_head(path: Path, head: Head) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(f"{head}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _last_head(path: Path) -> Head:
    """The last complete entry's (seq, hash), read from the end of the file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block = 4096
            while True:
                start = max(0, size - block)
                fh.seek(start)
                data = fh.read(size - start)
                lines = data.rstrip(b"\n").split(b"\n")
                if len(lines) > 1 or start == 0:
                    last = lines[-1]
                    break
                block *= 4
    except FileNotFoundError:
        return EMPTY_HEAD
    if not last.strip():
        return EMPTY_HEAD
    entry = json.loads(last)
    return Head(int(entry["seq"]), str(entry["hash"]))


@dataclass
class VerifyResult:
    entries: int = 0
    head: Head = EMPTY_HEAD
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "head": self.head.as_dict(), "errors": self.errors}


def iter_entries(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from enumerate(fh, 1)


def verify(path: Path, expect_head: Head | None = None) -> VerifyResult:
    """Walk the whole chain; list every break, then compare the end with the known heads."""
    result = VerifyResult()
    name = path.name
    prev = EMPTY_HEAD
    if path.exists():
        for lineno, line in iter_entries(path):
            where = f"{name}:{lineno}"
            if not line.endswith("\n"):
                result.errors.append(f"{where}: incomplete last line (torn write or truncation)")
            try:
                entry = json.loads(line)
                seq, recorded_prev, recorded_hash = int(entry["seq"]), entry["prev"], entry["hash"]
            except (ValueError, KeyError, TypeError) as exc:
                result.errors.append(f"{where}: not an audit entry ({exc})")
                continue
            if seq != prev.seq + 1:
                result.errors.append(f"{where}: seq {seq} follows {prev.seq} (entries deleted or reordered)")
            if recorded_prev != prev.hash:
                result.errors.append(f"{where}: prev hash does not match entry {prev.seq} (chain broken)")
            if entry_hash(entry) != recorded_hash:
                result.errors.append(f"{where}: entry {seq} hash mismatch (entry edited)")
            prev = Head(seq, recorded_hash)
            result.entries += 1
    result.head = prev
    head_path = head_path_for(path)
    known = [(head_path.name, _read_head_file(head_path, result.errors))]
    if expect_head is not None:
        known.append(("expected head", expect_head))
    for name, head in known:
        if head is None:
            continue
        _compare_known_head(path, name, head, prev, result.errors)
    return result


def _read_head_file(path: Path, errors: list[str]) -> Head | None:
    try:
        return Head.parse(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        errors.append(f"{path.name}: {exc}")
        return None


def _compare_known_head(log_path: Path, name: str, known: Head, last: Head, errors: list[str]) -> None:
    if known.seq > last.seq:
        errors.append(f"log ends at entry {last.seq} but {name} is {known.seq}: the log was truncated")
        return
    if known.seq == 0:
        return
    found = None
    if log_path.exists():
        for _, line in iter_entries(log_path):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("seq") == known.seq:
                found = entry.get("hash")
                break
    if found != known.hash:
        errors.append(f"entry {known.seq} hash differs from {name}: the log was rewritten")
