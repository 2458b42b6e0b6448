"""What the agent tells the platform, and the local queue that survives platform outages.

Document shapes follow docs/hub.md "Report formats" (heartbeat, apply_receipt, error,
deletion_receipt, request); the agent adds a few fields the hub ignores if it does not know
them (listed in docs/daemon.md). Each document is queued as a JSON file in the state
directory (fsync'd, 0600) and, when the platform is reachable, sealed as a package signed by
the agent and encrypted to the platform, then uploaded to ``outbox/`` (temp name + rename).

The queue is bounded (``reporting.max_queue_size`` bytes): beyond it the *oldest heartbeats*
are dropped (a newer heartbeat supersedes them; the newest is always kept); receipts, errors
and requests are never dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from agent import __version__

log = structlog.get_logger(__name__)

FORMAT = 1
# JSON ``type`` -> package header kind (docs/hub.md)
HEADER_KIND = {
    "heartbeat": "report",
    "error": "report",
    "apply_receipt": "receipt",
    "deletion_receipt": "receipt",
    "request": "request",
}


def error_code(exc: BaseException) -> str:
    """A stable snake_case code for an error document: ``exc.code`` or the exception's class name."""
    explicit = getattr(exc, "code", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    name = type(exc).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "error"


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ReportBuilder:
    """Builds report documents for one agent; pure functions of their inputs."""

    def __init__(self, agent_id: str, started: float, clock: Callable[[], float] = time.time) -> None:
        self.agent_id = agent_id
        self.started = started
        self._clock = clock

    def _doc(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"format": FORMAT, "type": type_, "agent_id": self.agent_id, "time": rfc3339(self._clock()),
                **fields}

    def heartbeat(self, *, interval_s: float, config_digest: str, subscriptions: list[dict[str, Any]],
                  disk_free: Mapping[str, int | None], audit_head: Mapping[str, Any],
                  queue_length: int) -> dict[str, Any]:
        now = self._clock()
        return self._doc(
            "heartbeat", version=__version__, started=rfc3339(self.started), interval_s=int(interval_s),
            uptime_s=int(now - self.started), config_digest=config_digest, disk_free=dict(disk_free),
            audit_head=dict(audit_head), report_queue=queue_length, subscriptions=subscriptions,
        )

    def apply_receipt(self, *, subscription_id: str, package_id: str, sequence: int, kind: str, result: str,
                      rows_upserted: int = 0, rows_deleted: int = 0, files: int = 0,
                      expected_digest: str | None = None, local_digest: str | None = None,
                      digest_match: bool | None = None, mismatched_buckets: list[int] | None = None,
                      mismatched_files: list[str] | None = None,
                      error: Mapping[str, str] | None = None) -> dict[str, Any]:
        if result not in ("applied", "skipped", "rejected"):
            raise ValueError(f"receipt result must be applied/skipped/rejected, not {result!r}")
        return self._doc(
            "apply_receipt", subscription_id=subscription_id, package_id=package_id, sequence=sequence,
            kind=kind, result=result, rows_upserted=rows_upserted, rows_deleted=rows_deleted, files=files,
            expected_digest=expected_digest, local_digest=local_digest, digest_match=digest_match,
            mismatched_buckets=list(mismatched_buckets or []), mismatched_files=list(mismatched_files or []),
            error=dict(error) if error else None,
        )

    def error(self, *, subscription_id: str | None, code: str, message: str, package_id: str | None = None,
              sequence: int | None = None, package_name: str | None = None) -> dict[str, Any]:
        return self._doc("error", subscription_id=subscription_id, package_id=package_id, sequence=sequence,
                         code=code, message=message, package_name=package_name)

    def deletion_receipt(self, *, subscription_id: str, package_id: str, sequence: int, target: str,
                         rows: int, files: int) -> dict[str, Any]:
        return self._doc("deletion_receipt", subscription_id=subscription_id, package_id=package_id,
                         sequence=sequence, purged={"target": target, "rows": rows, "files": files})

    def request(self, *, subscription_id: str, request: str, reason: str, buckets: list[int] | None = None,
                files: list[str] | None = None) -> dict[str, Any]:
        if request not in ("resync", "resend_buckets", "resend_files"):
            raise ValueError(f"unknown request {request!r}")
        return self._doc("request", subscription_id=subscription_id, request_id=os.urandom(16).hex(),
                         request=request, buckets=list(buckets or []), files=list(files or []), reason=reason)


@dataclass(frozen=True)
class QueuedReport:
    path: Path
    document: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.document["type"])

    @property
    def kind(self) -> str:
        return HEADER_KIND[self.type]

    @property
    def subscription_id(self) -> str:
        return str(self.document.get("subscription_id") or "")


class ReportQueue:
    """Reports waiting for delivery, oldest first, in ``DIR`` (one fsync'd JSON file each)."""

    def __init__(self, directory: Path, max_bytes: int = 256 << 20) -> None:
        if max_bytes < 1:
            raise ValueError("report queue bound must be >= 1 byte")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._last_stamp = 0

    def _names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory) if n.endswith(".json"))

    def __len__(self) -> int:
        return len(self._names())

    def put(self, document: dict[str, Any]) -> Path:
        if document.get("type") not in HEADER_KIND:
            raise ValueError(f"not a report document: type {document.get('type')!r}")
        stamp = max(time.time_ns(), self._last_stamp + 1, self._newest_stamp() + 1)
        self._last_stamp = stamp
        path = self.directory / f"{stamp:020d}-{document['type']}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(document, fh, ensure_ascii=False, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        self._enforce_bound()
        return path

    def _newest_stamp(self) -> int:
        names = self._names()
        return int(names[-1].split("-", 1)[0]) if names else 0

    def size(self) -> int:
        """Bytes queued."""
        total = 0
        for name in self._names():
            with contextlib.suppress(FileNotFoundError):
                total += (self.directory / name).stat().st_size
        return total

    def _enforce_bound(self) -> None:
        sizes = {}
        for name in self._names():
            with contextlib.suppress(FileNotFoundError):
                sizes[name] = (self.directory / name).stat().st_size
        total = sum(sizes.values())
        heartbeats = [n for n in sizes if n.endswith("-heartbeat.json")][:-1]  # the newest always stays
        for name in heartbeats:
            if total <= self.max_bytes:
                return
            (self.directory / name).unlink(missing_ok=True)
            total -= sizes[name]
            self.dropped += 1
        if total > self.max_bytes:
            log.warning("reports.queue_over_bound", queued_bytes=total, bound=self.max_bytes,
                        reason="receipts, errors and requests are never dropped")

    def __iter__(self) -> Iterator[QueuedReport]:
        for name in self._names():
            path = self.directory / name
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            yield QueuedReport(path, document)

    def deliver(self, send: Callable[[QueuedReport], None]) -> int:
        """Send oldest first; stop at the first failure (order kept). Returns how many went out."""
        sent = 0
        for report in self:
            send(report)  # raises on failure: the rest stays queued
            report.path.unlink(missing_ok=True)
            sent += 1
        return sent


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
