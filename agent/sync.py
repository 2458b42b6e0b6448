"""One configuration's worth of the agent: transport, keys, stores, and the per-subscription pipeline.

Data flows one way: transport (fetch ``inbox/``) -> protocol reader (verify, decrypt) ->
store (tables or shares, via the config's resolver) -> state, audit, reports. Rules:

* packages are taken per subscription in sequence order; the inbox is never modified
  (the hub prunes what receipts acknowledge);
* a package that fails verification, or that a store rejects, is moved into
  ``<state_dir>/quarantine/`` with a ``.reason`` file, audited, reported (error + rejected
  receipt) and never retried; the next packages of that subscription then wait as a gap;
* a package whose base is not the local position (``builds_on`` ahead of us) is *held*:
  nothing after it is applied, and the gap is reported once;
* a subscription that maps to no local target is reported, never guessed;
* a digest mismatch after apply leaves a request naming the buckets or files;
* a revocation (``revoke`` package in ``control/`` or ``inbox/``) purges the target and
  answers with a signed deletion receipt.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from agent.config import AgentConfig, ConfigError, UnmappedSubscription, load_config
from agent.daemon import ConfigLoadError, MetricsSettings, RunContext
from agent.reports import QueuedReport, error_code, rfc3339
from agent.scheduling import Schedule
from agent.state import State, subscription_view
from agent.stores import (
    Applied,
    Position,
    Purged,
    ShareAdapter,
    StoreAdapter,
    StoreFactory,
    StoreRejected,
    Verified,
    open_store,
)
from agent.subscription_list import SubscriptionEntry, parse_subscription_list
from connectors.transports import Transport, TransportError, TransportUnavailable, open_transport
from protocol.errors import KeysError, LayoutError, PackageError
from protocol.header import KIND_REVOKE, KIND_SUBSCRIPTIONS, PackageHeader
from protocol.keys import PartyKeys, PublicBundle, load_bundle, load_keys
from protocol.layout import (
    CONTROL,
    INBOX,
    OUTBOX,
    PackageName,
    new_package_id,
    package_filename,
    parse_package_name,
    sorted_packages,
)
from protocol.package import Package, PackageWriter, open_package

log = structlog.get_logger(__name__)

HEARTBEAT_CHANNEL = "heartbeat"


# ----------------------------------------------------------------------------- the runtime


def config_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _ProgressReader(io.RawIOBase):
    """Wraps the plaintext stream: every read is progress, so it feeds the watchdog."""

    def __init__(self, inner: io.BufferedIOBase, tick: Callable[[], None]) -> None:
        self._inner = inner
        self._tick = tick

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._tick()
        return self._inner.readinto(buffer)  # no copy


class AgentRuntime:
    """Everything one version of the config needs; built by :func:`load_runtime`."""

    def __init__(self, config: AgentConfig, path: Path, store_factory: StoreFactory,
                 transport: Transport | None = None) -> None:
        self.config = config
        self.config_path = path
        self.config_digest = config_digest(path)
        self.agent_id = config.agent.id
        self.state_dir = config.agent.state_dir
        self.audit_path = config.audit_path
        self.poll_interval = config.platform.poll_interval.total_seconds()
        self.heartbeat_interval = config.reporting.heartbeat_interval.total_seconds()
        self.report_queue_max = config.reporting.max_queue_size
        self.metrics = _metrics_settings(config)
        try:
            self.keys: PartyKeys = load_keys(config.agent.keys_dir)
            self.platform: PublicBundle = load_bundle(config.platform.public_keys)
        except KeysError as exc:
            raise ConfigLoadError(f"keys: {exc}") from None
        if self.keys.party_id != self.agent_id:
            raise ConfigLoadError(f"keys in {config.agent.keys_dir} belong to {self.keys.party_id!r}, "
                                  f"not to agent.id {self.agent_id!r}")
        self.trusted = {self.platform.party_id: self.platform}
        own = self.keys.public_bundle()
        self.key_ids = {"agent_signing": own.signing_key_id, "agent_encryption": own.encryption_key_id,
                        "platform_signing": self.platform.signing_key_id,
                        "platform_encryption": self.platform.encryption_key_id}
        self.transport = transport or open_transport(config.platform)
        self._store_factory = store_factory
        self._stores: dict[str, StoreAdapter] = {}
        self.entries: dict[str, SubscriptionEntry] = {}
        self._inbox: list[PackageName] | None = None
        self._unreachable: str | None = None
        self._drift: queue.Queue[tuple[str, Any]] = queue.Queue()  # filled by watcher threads
        self._watching: set[str] = set()
        self._last_drift: dict[str, tuple[tuple[str, str], ...]] = {}
        self.work_dir = self.state_dir / "incoming"
        self.quarantine_dir = self.state_dir / "quarantine"

    # -- control/ ---------------------------------------------------------------------------
    def _reachable(self) -> None:
        """Once the platform proved unreachable in this cycle, fail fast instead of retrying per call."""
        if self._unreachable is not None:
            raise TransportUnavailable(f"platform unreachable earlier in this cycle: {self._unreachable}")

    def _note_unreachable(self, exc: TransportUnavailable) -> None:
        self._unreachable = str(exc)

    def subscriptions(self, ctx: RunContext) -> dict[str, Schedule]:
        self._inbox = None
        self._unreachable = None  # a new cycle: try the platform again
        try:
            names = [e.name for e in self.transport.listdir(CONTROL)]
        except TransportUnavailable as exc:
            self._note_unreachable(exc)
            raise
        packages, _foreign = sorted_packages(names)
        lists = [p for p in packages if p.channel == "subscriptions"]
        if not lists:
            raise PackageError("control/ holds no subscription list yet")
        newest = lists[-1]
        with self._fetch_verified(CONTROL, newest, ctx) as package:
            if package.header.kind != KIND_SUBSCRIPTIONS:
                raise PackageError(f"control/{newest.filename} is a {package.header.kind} package, "
                                   "not a subscription list")
            self._check_not_older(ctx.state, package.header)
            raw = package.plaintext().read()
            entries = parse_subscription_list(raw, self.agent_id)
        ctx.state.set_meta("subscriptions_json", raw.decode("utf-8"))  # for status/verify, offline
        self.entries = entries
        for sub_id, entry in entries.items():
            ctx.state.update_subscription(sub_id, kind=entry.provision_method)
        for revoke in (p for p in packages if p.channel != "subscriptions"):
            self._handle_control_revoke(revoke, ctx)
        return {sub_id: e.schedule for sub_id, e in entries.items()}

    def saved_subscriptions(self, ctx: RunContext) -> dict[str, Schedule]:
        raw = ctx.state.meta("subscriptions_json")
        if not raw:
            return {}
        self.entries = parse_subscription_list(raw.encode(), self.agent_id)
        return {sub_id: e.schedule for sub_id, e in self.entries.items()}

    def _check_not_older(self, state: State, header: PackageHeader) -> None:
        """A replayed older list (withheld newer one) must not roll the subscriptions back."""
        seen = int(state.meta("subscriptions_sequence") or 0)
        if header.sequence < seen:
            raise PackageError(f"subscription list sequence {header.sequence} is older than {seen} "
                               "already seen (replay)")
        state.set_meta("subscriptions_sequence", str(header.sequence))

    def _handle_control_revoke(self, name: PackageName, ctx: RunContext) -> None:
        if ctx.state.meta(f"revoke_done:{name.package_id}") or ctx.state.is_quarantined(name.filename):
            return
        try:
            with self._fetch_verified(CONTROL, name, ctx) as package:
                if package.header.kind != KIND_REVOKE:
                    return
                self._revoke(package.header, ctx)
        except PackageError as exc:
            self._quarantine(CONTROL, name, exc, None, ctx)

    # -- fetching ---------------------------------------------------------------------------
    def _local_copy(self, name: PackageName) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.work_dir / name.filename

    def _fetch(self, directory: str, name: PackageName, ctx: RunContext) -> Path:
        local = self._local_copy(name)
        self.transport.fetch(f"{directory}/{name.filename}", local, progress=lambda done, total: ctx.tick())
        return local

    @contextmanager
    def _fetch_verified(self, directory: str, name: PackageName, ctx: RunContext) -> Iterator[Package]:
        local = self._fetch(directory, name, ctx)
        package = open_package(local, trusted_senders=self.trusted, recipient=self.keys)
        try:
            if package.header.package_id != name.package_id or package.header.sequence != name.sequence \
                    or package.header.subscription != name.channel:
                raise PackageError(f"{directory}/{name.filename}: file name does not match the signed header "
                                   f"({package.header.subscription}.{package.header.sequence}."
                                   f"{package.header.package_id})", header=package.header)
            yield package
        finally:
            package.close()
        local.unlink(missing_ok=True)

    # -- inbox ------------------------------------------------------------------------------
    def _inbox_packages(self, ctx: RunContext) -> list[PackageName]:
        if self._inbox is None:
            packages, foreign = sorted_packages(e.name for e in self.transport.listdir(INBOX))
            if foreign:
                log.warning("inbox.foreign_names", names=foreign[:10], count=len(foreign))
            self._inbox = packages
        return self._inbox

    def store(self, sub_id: str) -> StoreAdapter:
        """The store for a subscription, via the config's resolver (raises UnmappedSubscription)."""
        if sub_id not in self._stores:
            entry = self.entries.get(sub_id)
            if entry is None:
                raise UnmappedSubscription(f"subscription {sub_id} is not in the signed subscription list")
            target = self.config.resolve(sub_id, entry.provision_method)  # raises when nothing maps
            self._stores[sub_id] = self._store_factory(target, entry, self.config)
        return self._stores[sub_id]

    def sync(self, subscription_id: str, ctx: RunContext) -> bool:
        self._reachable()
        try:
            return self._sync(subscription_id, ctx)
        except TransportUnavailable as exc:
            self._note_unreachable(exc)
            raise

    def _sync(self, subscription_id: str, ctx: RunContext) -> bool:
        self._inbox = None  # list afresh on every run
        state = ctx.state
        try:
            store = self.store(subscription_id)
        except UnmappedSubscription as exc:
            self._report_once(ctx, subscription_id, "unmapped", str(exc))
            ctx.audit.record("subscription.unmapped", subscription=subscription_id, reason=str(exc))
            return False
        state.update_subscription(subscription_id, target=store.target)
        position = store.position()
        floor = int(state.meta(f"revoked_sequence:{subscription_id}") or 0)
        mine = [p for p in self._inbox_packages(ctx) if p.channel == subscription_id]
        published = max((p.sequence for p in mine), default=None)
        if published is not None:
            state.update_subscription(subscription_id, published_sequence=published)
        if position.revoked or (floor and position.sequence == 0 and all(p.sequence <= floor for p in mine)):
            return True  # purged: nothing is applied any more (older packages may linger in the inbox)
        self._mirror_position(state, subscription_id, position)
        blocked: list[int] = []  # sequences rejected or held in this run
        holding = False  # once one package is held, later deltas wait too; a later snapshot still applies
        for name in mine:
            if ctx.stop_requested():
                break
            if name.sequence <= max(position.sequence, floor):
                if name.sequence <= floor or state.is_acked(name.package_id):
                    continue
                self._acknowledge_skipped(name, ctx)
                continue
            if state.is_quarantined(name.filename):
                blocked.append(name.sequence)
                continue
            outcome = self._process(subscription_id, name, store, position, ctx, report_hold=not holding)
            if outcome == "held":
                blocked.append(name.sequence)
                holding = True
                continue
            if outcome == "rejected":
                blocked.append(name.sequence)
                continue
            position = store.position()
        self._mirror_position(state, subscription_id, position)
        self._drop_stale_downloads(subscription_id, position.sequence)
        state.forget_packages(subscription_id, {p.package_id for p in mine})
        ok = not any(sequence > position.sequence for sequence in blocked)  # a later snapshot supersedes
        if ok and not ctx.stop_requested():
            state.update_subscription(subscription_id, last_success=time.time(), last_error=None,
                                      held_gap=None)
        return ok

    def _drop_stale_downloads(self, sub_id: str, applied: int) -> None:
        """Local copies of packages already applied (left by a crash between apply and cleanup)."""
        if not self.work_dir.is_dir():
            return
        for path in self.work_dir.iterdir():
            try:
                name = parse_package_name(path.name)
            except LayoutError:
                continue
            if name.channel == sub_id and name.sequence <= applied:
                path.unlink(missing_ok=True)

    def _mirror_position(self, state: State, sub_id: str, position: Position) -> None:
        state.update_subscription(sub_id, last_sequence=position.sequence,
                                  last_package_id=position.package_id, local_digest=position.digest)

    def _acknowledge_skipped(self, name: PackageName, ctx: RunContext) -> None:
        """At or below our position: already applied; a 'skipped' receipt lets the hub prune it."""
        ctx.queue.put(ctx.reports.apply_receipt(subscription_id=name.channel, package_id=name.package_id,
                                                sequence=name.sequence, kind="unknown", result="skipped"))
        ctx.state.mark_acked(name.channel, name.sequence, name.package_id, "skipped")
        ctx.audit.record("package.skipped", subscription=name.channel, package_id=name.package_id,
                         sequence=name.sequence, reason="already applied")

    def _process(self, sub_id: str, name: PackageName, store: StoreAdapter, position: Position,
                 ctx: RunContext, report_hold: bool = True) -> str:
        try:
            local = self._fetch(INBOX, name, ctx)
        except TransportError as exc:
            ctx.state.record_error(sub_id, f"fetch {name.filename}: {exc}")
            raise
        if ctx.state.mark_received(sub_id, name.sequence, name.package_id):  # held ones are read again
            ctx.audit.record("package.received", subscription=sub_id, package=name.filename,
                             package_id=name.package_id, sequence=name.sequence, bytes=local.stat().st_size)
        try:
            package = open_package(local, trusted_senders=self.trusted, recipient=self.keys)
        except PackageError as exc:
            self._quarantine(INBOX, name, exc, sub_id, ctx)
            return "rejected"
        with package:
            header = package.header
            try:
                if (header.subscription, header.sequence, header.package_id) != (
                        name.channel, name.sequence, name.package_id):
                    raise PackageError("file name does not match the signed header "
                                       f"({header.subscription}.{header.sequence}.{header.package_id})",
                                       header=header)
                if header.kind == KIND_REVOKE:
                    self._revoke(header, ctx)
                    local.unlink(missing_ok=True)
                    return "applied"
                if header.builds_on is not None and header.builds_on != position.sequence:
                    return self._hold(sub_id, header, position, ctx, report_hold)
                started = time.monotonic()
                stream = io.BufferedReader(_ProgressReader(package.plaintext(), ctx.tick))
                applied = store.apply(header, stream)
            except (PackageError, StoreRejected) as exc:
                self._quarantine(INBOX, name, exc, sub_id, ctx, header=header)
                return "rejected"
        if applied.result == "held":  # the store's own gap check (e.g. a delta without builds_on)
            return self._hold(sub_id, header, position, ctx, report_hold)
        local.unlink(missing_ok=True)
        ctx.metrics.apply_seconds.labels(sub_id, header.kind).observe(time.monotonic() - started)
        self._applied(sub_id, header, applied, ctx)
        return "applied"

    def _applied(self, sub_id: str, header: PackageHeader, applied: Applied, ctx: RunContext) -> None:
        state = ctx.state
        now = time.time()
        ctx.queue.put(ctx.reports.apply_receipt(
            subscription_id=sub_id, package_id=header.package_id, sequence=header.sequence, kind=header.kind,
            result=applied.result, rows_upserted=applied.rows_upserted, rows_deleted=applied.rows_deleted,
            files=applied.files, expected_digest=applied.expected_digest, local_digest=applied.local_digest,
            digest_match=applied.digest_match, mismatched_buckets=applied.mismatched_buckets,
            mismatched_files=applied.mismatched_files))
        state.mark_acked(sub_id, header.sequence, header.package_id, applied.result)
        ctx.audit.record("package.applied" if applied.result == "applied" else "package.skipped",
                         subscription=sub_id, package_id=header.package_id, sequence=header.sequence,
                         kind=header.kind, rows_upserted=applied.rows_upserted,
                         rows_deleted=applied.rows_deleted, files=applied.files,
                         local_digest=applied.local_digest, digest_match=applied.digest_match)
        ctx.metrics.packages.labels(sub_id, applied.result).inc()
        ctx.metrics.rows.labels(sub_id, "upsert").inc(applied.rows_upserted)
        ctx.metrics.rows.labels(sub_id, "delete").inc(applied.rows_deleted)
        ctx.metrics.files.labels(sub_id).inc(applied.files)
        ctx.metrics.last_sequence.labels(sub_id).set(header.sequence)
        match = applied.digest_match
        if match is not None:
            ctx.metrics.digest_match.labels(sub_id).set(1 if match else 0)
        mismatch = applied.mismatched_files or applied.mismatched_buckets  # file names say more
        state.update_subscription(sub_id, last_success=now, last_error=None, held_gap=None,
                                  expected_digest=applied.expected_digest, digest_match=match,
                                  mismatch=list(mismatch) if mismatch else None)
        if match is False:
            self._request_resend(sub_id, applied, f"digest mismatch after sequence {header.sequence}", ctx)

    def _request_resend(self, sub_id: str, result: Applied | Verified, reason: str, ctx: RunContext) -> None:
        if result.mismatched_buckets:
            # files: a file subscription's own files in those buckets (the platform removes the
            # ones it does not publish); a table has none
            request = ctx.reports.request(subscription_id=sub_id, request="resend_buckets", reason=reason,
                                          buckets=result.mismatched_buckets, files=result.mismatched_files)
        elif result.mismatched_files:
            request = ctx.reports.request(subscription_id=sub_id, request="resend_files", reason=reason,
                                          files=result.mismatched_files)
        else:
            request = ctx.reports.request(subscription_id=sub_id, request="resync", reason=reason)
        ctx.queue.put(request)
        ctx.audit.record("digest.mismatch", subscription=sub_id, request=request["request"],
                         buckets=result.mismatched_buckets, files=result.mismatched_files[:100],
                         request_id=request["request_id"])

    def _hold(self, sub_id: str, header: PackageHeader, position: Position, ctx: RunContext,
              report: bool) -> str:
        """Keep the package (its local copy stays for the next try); report the first gap of a run once."""
        if not report:
            return "held"
        gap = {"expected": position.sequence, "builds_on": header.builds_on, "found": header.sequence}
        previous = (ctx.state.subscription(sub_id) or {}).get("held_gap")
        ctx.state.update_subscription(sub_id, held_gap=gap)
        if previous != gap:
            message = (f"gap: package {header.sequence} builds on {header.builds_on} but the local position "
                       f"is {position.sequence}; held until the missing packages arrive")
            ctx.queue.put(ctx.reports.error(subscription_id=sub_id, code="gap", message=message,
                                            package_id=header.package_id, sequence=header.sequence))
            ctx.audit.record("package.held", subscription=sub_id, package_id=header.package_id, **gap)
            log.warning("package.held", subscription=sub_id, **gap)
        return "held"

    def _quarantine(self, directory: str, name: PackageName, exc: BaseException, sub_id: str | None,
                    ctx: RunContext, header: PackageHeader | None = None) -> None:
        header = header or getattr(exc, "header", None)
        code = error_code(exc)
        reason = f"{getattr(exc, 'origin', type(exc).__name__)}: {exc}"
        self.quarantine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.quarantine_dir / name.filename
        local = self._local_copy(name)
        if local.exists():
            os.replace(local, target)
        (self.quarantine_dir / (name.filename + ".reason")).write_text(
            json.dumps({"package": f"{directory}/{name.filename}", "code": code, "reason": reason,
                        "time": rfc3339(time.time())}, ensure_ascii=False, indent=1) + "\n")
        ctx.state.add_quarantine(sub_id, name.filename, name.package_id, name.sequence, reason, target)
        if sub_id is not None:
            ctx.state.record_error(sub_id, reason)
        ctx.audit.record("package.rejected", subscription=sub_id, package=f"{directory}/{name.filename}",
                         package_id=name.package_id, sequence=name.sequence, code=code, reason=reason)
        ctx.audit.record("package.quarantined", package_id=name.package_id, path=str(target))
        ctx.queue.put(ctx.reports.error(subscription_id=sub_id or name.channel, code=code, message=reason,
                                        package_id=name.package_id, sequence=name.sequence,
                                        package_name=name.filename))
        ctx.queue.put(ctx.reports.apply_receipt(
            subscription_id=sub_id or name.channel, package_id=name.package_id, sequence=name.sequence,
            kind=header.kind if header is not None else "unknown", result="rejected",
            error={"code": code, "message": reason}))
        ctx.metrics.packages.labels(sub_id or name.channel, "rejected").inc()
        if sub_id is not None and directory == INBOX and not isinstance(exc, StoreRejected):
            # The copy did not verify (damaged, forged, expired): a fresh snapshot is the way forward.
            # Content a store refuses would be refused again, so that waits for the operator.
            request = ctx.reports.request(subscription_id=sub_id, request="resync",
                                          reason=f"package {name.sequence} rejected: {code}")
            ctx.queue.put(request)
            ctx.audit.record("resync.requested", subscription=sub_id, request_id=request["request_id"],
                             reason=request["reason"])
        log.error("package.quarantined", package=name.filename, code=code, reason=reason)

    # -- revocation -------------------------------------------------------------------------
    def _revoke(self, header: PackageHeader, ctx: RunContext) -> None:
        sub_id = header.subscription
        entry = self.entries.get(sub_id)
        kind = entry.provision_method if entry else (ctx.state.subscription(sub_id) or {}).get("kind")
        purged = Purged(target="(nothing local)")
        if kind in ("table", "file"):
            if entry is None:
                self.entries[sub_id] = SubscriptionEntry(sub_id, kind, Schedule("realtime"), {}, None)
            try:
                purged = self.store(sub_id).purge()
            except UnmappedSubscription as exc:
                purged = Purged(target=f"(unmapped: {exc})")
        ctx.state.set_meta(f"revoked_sequence:{sub_id}", str(header.sequence))
        ctx.state.set_meta(f"revoke_done:{header.package_id}", rfc3339(time.time()) or "")
        ctx.state.update_subscription(sub_id, purged_at=time.time(), last_sequence=0, local_digest=None,
                                      digest_match=None)
        ctx.audit.record("subscription.purged", subscription=sub_id, package_id=header.package_id,
                         target=purged.target, rows=purged.rows, files=purged.files)
        ctx.queue.put(ctx.reports.deletion_receipt(subscription_id=sub_id, package_id=header.package_id,
                                                   sequence=header.sequence, target=purged.target,
                                                   rows=purged.rows, files=purged.files))
        log.warning("subscription.purged", subscription=sub_id, target=purged.target)

    # -- local drift of file subscriptions ---------------------------------------------------
    def housekeeping(self, ctx: RunContext) -> None:
        """Between runs (daemon mode): watch file subscriptions that hold data; handle drift found."""
        for sub_id, entry in self.entries.items():
            if entry.provision_method != "file" or sub_id in self._watching:
                continue
            try:
                adapter = self.store(sub_id)
            except UnmappedSubscription:
                continue
            if isinstance(adapter, ShareAdapter) and adapter.position().sequence > 0:
                mode = adapter.watch(self._drift_callback(sub_id))
                self._watching.add(sub_id)
                ctx.state.set_meta(f"watch:{sub_id}", mode)  # shown by `edu-agent status`
                log.info("drift.watching", subscription=sub_id, mode=mode)
        while True:
            try:
                sub_id, report = self._drift.get_nowait()
            except queue.Empty:
                return
            self._handle_drift(sub_id, report, ctx)

    def _drift_callback(self, sub_id: str) -> Callable[[Any], None]:
        def on_drift(report: Any) -> None:  # runs on the watcher's thread: hand over, nothing else
            self._drift.put((sub_id, report))

        return on_drift

    def has_pending(self) -> bool:
        """Work arrived from a watcher thread: the loop should wake up."""
        return not self._drift.empty()

    def _handle_drift(self, sub_id: str, report: Any, ctx: RunContext) -> None:
        adapter = self._stores.get(sub_id)
        if not isinstance(adapter, ShareAdapter):
            return
        items = [{"path": d.path, "kind": d.kind, "expected": d.expected, "found": d.found}
                 for d in report.items]
        outcome = adapter.repair(report.items)
        found = {i["path"]: i["found"] or "" for i in items}
        signature = tuple(sorted((path, found.get(path, "")) for path in outcome.resend))
        repeated = self._last_drift.get(sub_id) == signature
        self._last_drift[sub_id] = signature
        if repeated and not outcome.repaired and not outcome.removed:
            return  # the same files still wait for the platform: already reported and requested
        ctx.audit.record("drift.detected", subscription=sub_id, mode=report.mode, items=items[:100],
                         repaired=outcome.repaired[:100], removed=outcome.removed[:100],
                         resend=outcome.resend[:100])
        listed = ", ".join(f"{i['kind']} {i['path']}" for i in items[:20])
        message = (f"{len(items)} local change(s) in {adapter.target}: {listed}; "
                   f"{len(outcome.repaired)} restored from the verified cache, {len(outcome.removed)} "
                   f"removed, {len(outcome.resend)} to be resent")
        ctx.queue.put(ctx.reports.error(subscription_id=sub_id, code="local_drift", message=message))
        log.warning("drift.detected", subscription=sub_id, changes=len(items), resend=len(outcome.resend))
        if outcome.resend:
            ctx.state.update_subscription(sub_id, digest_match=False, mismatch=outcome.resend)
            ctx.metrics.digest_match.labels(sub_id).set(0)
            self._request_resend(sub_id, Verified(ok=False, local_digest=None, expected_digest=None,
                                                  mismatched_files=outcome.resend),
                                 "local drift without a verified cached copy", ctx)

    # -- reporting helpers ------------------------------------------------------------------
    def _report_once(self, ctx: RunContext, sub_id: str, code: str, message: str) -> None:
        row = ctx.state.subscription(sub_id) or {}
        if row.get("last_error") != message:
            ctx.queue.put(ctx.reports.error(subscription_id=sub_id, code=code, message=message))
        ctx.state.record_error(sub_id, message)

    def heartbeat_subscriptions(self, ctx: RunContext) -> list[dict[str, Any]]:
        out = []
        for row in ctx.state.subscriptions():
            sub_id = row["subscription_id"]
            if sub_id not in self.entries and not row.get("purged_at"):
                continue
            out.append(subscription_view(row))
        return out

    def disk_free(self) -> dict[str, int | None]:
        free: dict[str, int | None] = {"state_dir": _free(self.state_dir)}
        for name, share in self.config.targets.shares.items():
            free[f"share:{name}"] = _free(share.path)
        for name, database in self.config.targets.databases.items():
            if database.dialect == "sqlite":
                db_file = database.url.split("///", 1)[-1]
                free[f"database:{name}"] = _free(Path(db_file).parent)
            else:
                free[f"database:{name}"] = None  # a server's disk is not visible from here
        return free

    def send_report(self, report: QueuedReport) -> None:
        self._reachable()
        state = State(self.state_dir)
        try:
            sequence = int(state.meta("outbox_sequence") or 0) + 1
            state.set_meta("outbox_sequence", str(sequence))
        finally:
            state.close()
        channel = report.subscription_id or HEARTBEAT_CHANNEL
        out_dir = self.state_dir / "outgoing"
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps(report.document, ensure_ascii=False, separators=(",", ":")).encode()
        package_id = new_package_id()
        name = package_filename(channel, sequence, package_id)
        final = out_dir / name
        with PackageWriter(final, kind=report.kind, sender=self.keys, recipient=self.platform,
                           subscription=channel, sequence=sequence, package_id=package_id) as writer:
            writer.write(payload)
        try:
            self.transport.put(final, f"{OUTBOX}/{name}")
        except TransportUnavailable as exc:
            self._note_unreachable(exc)
            raise
        finally:
            final.unlink(missing_ok=True)

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        self.transport.close()


def _free(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _metrics_settings(config: AgentConfig) -> MetricsSettings | None:
    section = config.metrics
    if not section.enabled:
        return None
    source = section.token_source
    if source is None:
        raise ConfigLoadError("metrics.enabled needs a token (token_file, token_env or token_credential)")
    host, port = section.address
    try:
        token = source.resolve()
    except Exception as exc:
        raise ConfigLoadError(f"metrics token: {exc}") from None
    return MetricsSettings(host, port, token, [str(n) for n in section.allow])


def load_runtime(path: Path, store_factory: StoreFactory | None = None) -> AgentRuntime:
    """Load and validate the config file, keys and platform key; ConfigLoadError says what is wrong."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise ConfigLoadError(str(exc)) from None
    return AgentRuntime(config, path, store_factory or open_store)

