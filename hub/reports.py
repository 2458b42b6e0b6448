"""Reading what agents send back: heartbeats, receipts, errors, requests (docs/hub.md "Report formats").

Every outbox file is a package signed by the agent: it is verified against that agent's
registered key (and must be addressed to the platform) before it is decrypted, and its JSON
checked before it is believed. Anything else is listed as invalid, never used. Receipts
acknowledge packages; acknowledged packages are pruned from the inbox.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.registry import Registry
from hub.state import PublishState
from protocol.errors import PackageError, ProtocolError
from protocol.keys import PartyKeys, PublicBundle, load_keys
from protocol.layout import OUTBOX, sorted_packages
from protocol.package import open_package, read_header

if TYPE_CHECKING:
    from hub.publish import Publisher

MAX_DOCUMENT_BYTES = 1 << 20
TYPES = {"heartbeat", "error", "apply_receipt", "deletion_receipt", "request"}
KIND_OF = {
    "heartbeat": "report",
    "error": "report",
    "apply_receipt": "receipt",
    "deletion_receipt": "receipt",
    "request": "request",
}
REQUIRED = {
    "heartbeat": ("subscriptions",),
    "error": ("subscription_id", "code", "message"),
    "apply_receipt": ("subscription_id", "package_id", "sequence", "result"),
    "deletion_receipt": ("subscription_id", "package_id"),
    "request": ("subscription_id", "request_id", "request"),
}


class DocumentError(ValueError):
    pass


@dataclass(frozen=True)
class Document:
    agent: str
    file: str
    kind: str
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.body["type"])

    @property
    def time(self) -> dt.datetime:
        return parse_time(self.body["time"])


def parse_time(text: Any) -> dt.datetime:
    if not isinstance(text, str):
        raise DocumentError(f"time {text!r} is not a string")
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise DocumentError(f"time {text!r}: {exc}") from exc
    if moment.tzinfo is None:
        raise DocumentError(f"time {text!r} has no time zone")
    return moment


def check_document(body: Any, agent: str, header_subscription: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise DocumentError("payload is not a JSON object")
    if body.get("format") != 1:
        raise DocumentError(f"format {body.get('format')!r} is not 1")
    kind = body.get("type")
    if kind not in TYPES:
        raise DocumentError(f"unknown type {kind!r}")
    if body.get("agent_id") != agent:
        raise DocumentError(f"agent_id {body.get('agent_id')!r} is not the signer {agent!r}")
    parse_time(body.get("time"))
    for name in REQUIRED[kind]:
        if name not in body:
            raise DocumentError(f"{kind}: field {name} is missing")
    if (
        kind != "heartbeat"
        and body["subscription_id"] is not None
        and body["subscription_id"] != header_subscription
    ):
        raise DocumentError("subscription_id differs from the signed header's subscription")
    return body


def read_outbox(
    registry: Registry,
    keys: PartyKeys,
    agent: str,
    bundle: PublicBundle,
    *,
    channel: str | None = None,
    kind: str | None = None,
) -> tuple[list[Document], list[dict[str, str]]]:
    """Every valid document of one agent's outbox, and the invalid files with the reason.

    ``channel``/``kind`` narrow the read: other file names are skipped, and a package whose
    (verified) header is of another kind is not decrypted.
    """
    outbox = registry.exchange_dir / agent / OUTBOX
    if not outbox.is_dir():
        return [], []
    packages, foreign = sorted_packages(os.listdir(outbox))
    documents: list[Document] = []
    invalid = [{"agent": agent, "file": name, "reason": "not a package file name"} for name in foreign]
    trusted = {agent: bundle}
    for name in packages:
        if channel is not None and name.channel != channel:
            continue
        path = outbox / name.filename
        try:
            if kind is not None and read_header(path, trusted_senders=trusted, recipient=keys).kind != kind:
                continue
            with open_package(path, trusted_senders=trusted, recipient=keys) as package:
                header = package.header
                if header.sender != agent:
                    raise DocumentError(f"signed by {header.sender!r}, not {agent!r}")
                if header.subscription != name.channel or header.package_id != name.package_id:
                    raise DocumentError("file name disagrees with the signed header")
                if header.plaintext_bytes > MAX_DOCUMENT_BYTES:
                    raise DocumentError(f"document of {header.plaintext_bytes} bytes is too large")
                raw = b"".join(package.iter_plaintext())
                body = check_document(json.loads(raw.decode("utf-8")), agent, header.subscription)
                if KIND_OF[body["type"]] != header.kind:
                    raise DocumentError(f"a {body['type']} document in a {header.kind!r} package")
                documents.append(Document(agent, name.filename, header.kind, body))
        except (ProtocolError, PackageError, DocumentError, ValueError, OSError) as exc:
            invalid.append({"agent": agent, "file": name.filename, "reason": f"{type(exc).__name__}: {exc}"})
    documents.sort(key=lambda d: d.time)
    return documents, invalid


def pending_requests(
    publisher: Publisher, subscription_id: str, state: PublishState
) -> list[tuple[str, str, dict[str, Any]]]:
    """Requests from agents about this subscription that no publish has honoured yet."""
    out = []
    for agent in publisher.registry.agents():
        bundle = PublicBundle.from_dict(agent.bundle)
        documents, _invalid = read_outbox(
            publisher.registry, publisher.keys, agent.id, bundle, channel=subscription_id, kind="request"
        )
        for doc in documents:
            if doc.type != "request":
                continue
            if doc.body["request"] not in ("resync", "resend_buckets", "resend_files"):
                continue
            request_id = str(doc.body["request_id"])
            if not state.request_done(request_id):
                out.append((agent.id, request_id, doc.body))
    return out


# ---------------------------------------------------------------- the summary


@dataclass
class Row:
    agent: str
    subscription: str
    published_sequence: int
    applied_sequence: int
    lag_packages: int
    lag_seconds: float | None
    digest_match: bool | None
    last_heartbeat: str | None
    state: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # subscriptions a running publish kept locked

    def to_json(self) -> dict[str, Any]:
        return {
            "subscriptions": [r.to_json() for r in self.rows],
            "invalid": self.invalid,
            "pruned": self.pruned,
            "pruning_deferred": sorted(set(self.deferred)),
        }


def collect(
    root: Path,
    *,
    offline_after: float | None = None,
    lag_after: float = 600.0,
    now: dt.datetime | None = None,
) -> Summary:
    registry = Registry(root)
    keys = load_keys(registry.keys_dir)
    now = now or dt.datetime.now(dt.timezone.utc)
    summary = Summary()
    try:
        subscriptions = registry.subscriptions()
        for agent in registry.agents():
            bundle = PublicBundle.from_dict(agent.bundle)
            documents, invalid = read_outbox(registry, keys, agent.id, bundle)
            summary.invalid.extend(invalid)
            documents = _drop_superseded_heartbeats(registry, agent.id, documents)
            for sub in subscriptions:
                if not any(s.agent == agent.id for s in sub.subscribers):
                    continue
                path = registry.state_path(sub.id)
                state = PublishState(path)
                try:
                    row = _derive(agent.id, sub.id, documents, state, registry, now, offline_after, lag_after)
                    try:
                        state.db.execute("PRAGMA busy_timeout=1000")
                        summary.pruned.extend(_prune(registry, state, agent.id, row.applied_sequence))
                    except sqlite3.OperationalError:  # a publish holds the state: prune next time
                        summary.deferred.append(sub.id)
                finally:
                    state.close()
                summary.rows.append(row)
    finally:
        registry.close()
    return summary


def _drop_superseded_heartbeats(registry: Registry, agent: str, documents: list[Document]) -> list[Document]:
    """Only the newest heartbeat matters: older ones are deleted so the outbox does not grow forever."""
    heartbeats = [d for d in documents if d.type == "heartbeat"]
    for old in heartbeats[:-1]:
        (registry.exchange_dir / agent / OUTBOX / old.file).unlink(missing_ok=True)
    return [d for d in documents if d.type != "heartbeat"] + heartbeats[-1:]


def _derive(
    agent: str,
    sub: str,
    documents: list[Document],
    state: PublishState,
    registry: Registry,
    now: dt.datetime,
    offline_after: float | None,
    lag_after: float,
) -> Row:
    packages = state.packages(agent)
    published = max((p.sequence for p in packages), default=0)
    revoke = next((p for p in reversed(packages) if p.kind == "revoke"), None)
    heartbeats = [d for d in documents if d.type == "heartbeat"]
    mine = [d for d in documents if d.type != "heartbeat" and d.body.get("subscription_id") == sub]
    receipts = [d for d in mine if d.type == "apply_receipt"]
    good = [d for d in receipts if d.body["result"] in ("applied", "skipped")]
    applied = max((int(d.body["sequence"]) for d in good), default=0)
    digest_match: bool | None = None
    hb_entry: dict[str, Any] | None = None
    last_hb = heartbeats[-1] if heartbeats else None
    if last_hb is not None:
        for entry in last_hb.body.get("subscriptions") or []:
            if isinstance(entry, dict) and entry.get("subscription_id") == sub:
                hb_entry = entry
    if hb_entry is not None:
        applied = max(applied, int(hb_entry.get("applied_sequence") or 0))
        if hb_entry.get("digest_match") is not None:
            digest_match = bool(hb_entry["digest_match"])
    newer = receipts and (last_hb is None or receipts[-1].time >= last_hb.time)
    if newer and receipts[-1].body.get("digest_match") is not None:
        digest_match = bool(receipts[-1].body["digest_match"])
    unacked = [p for p in packages if p.sequence > applied]
    lag_seconds = None
    if unacked:
        lag_seconds = max(0.0, (now - parse_time(unacked[0].created)).total_seconds())
    row = Row(
        agent,
        sub,
        published,
        applied,
        len(unacked),
        lag_seconds,
        digest_match,
        last_hb.body["time"] if last_hb else None,
        "ok",
    )
    deletion = [d for d in mine if d.type == "deletion_receipt"]
    if revoke is not None and any(d.body["package_id"] == revoke.package_id for d in deletion):
        row.state = "purged"
        return row
    last_good = good[-1].time if good else None
    errors = [d for d in mine if d.type == "error" and (last_good is None or d.time > last_good)]
    if receipts and (
        receipts[-1].body["result"] == "rejected" or receipts[-1].body.get("digest_match") is False
    ):
        row.state, row.detail = "error", _error_text(receipts[-1].body)
        return row
    if hb_entry is not None and hb_entry.get("state") == "error":
        row.state, row.detail = "error", _error_text(hb_entry)
        return row
    if errors:
        row.state, row.detail = "error", f"{errors[-1].body['code']}: {errors[-1].body['message']}"
        return row
    limit = offline_after
    if limit is None:
        interval = float(last_hb.body.get("interval_s") or 300) if last_hb else 300.0
        limit = max(3 * interval, 900.0)
    if last_hb is None or (now - last_hb.time).total_seconds() > limit:
        row.state = "offline"
        row.detail = "no heartbeat" if last_hb is None else f"last heartbeat {last_hb.body['time']}"
        return row
    if unacked and lag_seconds is not None and lag_seconds > lag_after:
        row.state, row.detail = "lagging", f"{len(unacked)} package(s) unacknowledged for {lag_seconds:.0f}s"
    return row


def _error_text(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    if body.get("digest_match") is False:
        buckets, files = body.get("mismatched_buckets"), body.get("mismatched_files")
        return f"digest mismatch (buckets {buckets}, files {files})"
    return str(body.get("result") or body.get("state"))


def _prune(registry: Registry, state: PublishState, agent: str, applied: int) -> list[str]:
    """Acknowledged packages leave the inbox (the agent has applied them or already had them).

    The status commits first, then the files go: a crash in between leaves a file the agent
    will merely skip, never a record pointing at a missing package.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with state.transaction():
        acknowledged = [r for r in state.packages(agent, status="placed") if r.sequence <= applied]
        for record in acknowledged:
            state.set_status(record.package_id, "pruned", acked=stamp)
    for record in acknowledged:
        (registry.exchange_dir / agent / record.directory / record.filename).unlink(missing_ok=True)
    return [r.filename for r in acknowledged]


def render_table(summary: Summary) -> str:
    lines = [
        f"{'AGENT':<16} {'SUBSCRIPTION':<20} {'PUB':>5} {'APPLIED':>7} {'LAG':>4} {'DIGEST':<8} "
        f"{'LAST HEARTBEAT':<21} STATE",
    ]
    for r in summary.rows:
        digest = {True: "match", False: "MISMATCH", None: "-"}[r.digest_match]
        lines.append(
            f"{r.agent:<16} {r.subscription:<20} {r.published_sequence:>5} {r.applied_sequence:>7} "
            f"{r.lag_packages:>4} {digest:<8} {r.last_heartbeat or '-':<21} {r.state}"
            + (f"  ({r.detail})" if r.detail else "")
        )
    if summary.invalid:
        lines.append("")
        lines.append(f"INVALID outbox files ({len(summary.invalid)}), ignored:")
        lines.extend(f"  {i['agent']}/{i['file']}: {i['reason']}" for i in summary.invalid)
    if summary.pruned:
        lines.append(f"pruned {len(summary.pruned)} acknowledged package(s) from inboxes")
    if summary.deferred:
        lines.append(f"pruning deferred (publish in progress): {', '.join(sorted(set(summary.deferred)))}")
    return "\n".join(lines)
