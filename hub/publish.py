"""Publishing: change capture → packages in every subscriber's inbox, crash-safe and idempotent.

One run per subscription, under the state DB's write lock:

1. *recover*: packages committed by an earlier run but not yet moved into an inbox are moved
   now; spool files no committed record names (a run that died before its commit) are deleted.
2. *capture* the change into a spool file, updating the published state — uncommitted.
3. *package* it for each subscriber into the spool (``PackageWriter``: temp name + rename), and
   record each package as ``pending`` with the subscriber's new sequence.
4. *commit* the state transaction, then *place*: rename each package into the inbox
   (``pending`` → ``placed``).

A crash before 4 rolls everything back: the re-run computes the same change from the same
state and gives it the same sequence numbers. A crash after 4 is finished by step 1. An agent
therefore never sees a partial package, a gap, or two different packages with one sequence.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hub.capture import TableCapture, TableChange
from hub.catalog import CatalogError, Subscription
from hub.files import FileCapture, FileChange
from hub.registry import AgentRecord, Registry, RegistryError, now_utc
from hub.reports import pending_requests
from hub.rows import RowCodec
from hub.sftp import SftpAccount, write_authorized_key
from hub.source import TableReader
from hub.state import PackageRecord, PublishState
from protocol.digest import BUCKETS
from protocol.header import KIND_FILES, KIND_REVOKE, KIND_SUBSCRIPTIONS
from protocol.keys import PartyKeys, PublicBundle, load_keys
from protocol.layout import (
    CONTROL,
    INBOX,
    OUTBOX,
    SUBSCRIPTIONS_CHANNEL,
    is_temp_name,
    new_package_id,
    package_filename,
)
from protocol.package import PackageWriter

COPY_BLOCK = 1 << 20

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    subscription: str
    packages: list[tuple[str, int, str]] = field(default_factory=list)  # (agent, sequence, kind)
    upserts: int = 0
    deletes: int = 0
    files: int = 0
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"{self.subscription}: ERROR {self.error}"
        if not self.packages:
            return f"{self.subscription}: no change"
        sent = ", ".join(f"{a}#{s} {k}" for a, s, k in self.packages)
        counts = f"upserts {self.upserts}, deletes {self.deletes}, files {self.files}"
        return f"{self.subscription}: {sent} ({counts})"


class Publisher:
    """The hub's write side: agents, subscriptions, packages."""

    def __init__(self, registry: Registry, keys: PartyKeys) -> None:
        self.registry = registry
        self.keys = keys

    @classmethod
    @contextmanager
    def open(cls, root: Path) -> Iterator[Publisher]:
        registry = Registry(root)
        lock_path = Path(root) / "publish.lock"
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield cls(registry, load_keys(registry.keys_dir))
            finally:
                registry.close()

    # ------------------------------------------------------------------ agents
    def bundle(self, agent_id: str) -> PublicBundle:
        return PublicBundle.from_dict(self.registry.agent(agent_id).bundle)

    def exchange(self, agent_id: str) -> Path:
        return self.registry.exchange_dir / agent_id

    def add_agent(self, agent_id: str, bundle_path: Path, ssh_key_path: Path | None) -> AgentRecord:
        bundle = PublicBundle.from_json(Path(bundle_path).read_bytes())
        if bundle.party_id != agent_id:
            raise RegistryError(f"{bundle_path} is the bundle of {bundle.party_id!r}, not of {agent_id!r}")
        if any(a.id == agent_id for a in self.registry.agents()):  # before touching its SSH key
            raise RegistryError(f"agent {agent_id!r} is already registered (remove it first)")
        ssh_key = Path(ssh_key_path).read_text(encoding="ascii") if ssh_key_path else None
        account = SftpAccount.for_agent(self.registry.exchange_dir, agent_id)
        if ssh_key is not None:
            write_authorized_key(self.registry.authorized_keys_dir, account, ssh_key)
        record = self.registry.add_agent(agent_id, bundle.to_dict(), ssh_key)
        for sub in (INBOX, OUTBOX, CONTROL):
            (self.exchange(agent_id) / sub).mkdir(parents=True, exist_ok=True)
        platform = self.exchange(agent_id) / CONTROL / "platform.json"
        platform.write_text(self.keys.public_bundle().to_json(), encoding="utf-8")
        return record

    # ------------------------------------------------------------------ subscriptions
    def put_subscription(self, path: Path) -> tuple[Subscription, bool]:
        try:
            document = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{path}: cannot read: {exc}") from exc
        before: set[str] = set()
        previous_id = _peek_id(document)
        if previous_id is not None:
            with contextlib.suppress(RegistryError):  # RegistryError: a new subscription
                before = {x.agent for x in self.registry.subscription(previous_id).subscribers}
        sub, new = self.registry.put_subscription(document, str(path))
        # Agents added or dropped both get a fresh list: a dropped agent must stop scheduling it.
        for agent in sorted(before | {x.agent for x in sub.subscribers}):
            self.write_subscription_list(agent)
        return sub, new

    def _control_sequence(self, agent_id: str, channel: str) -> int:
        highest = 0
        for name in os.listdir(self.exchange(agent_id) / CONTROL):
            if name.startswith(channel + ".") and name.endswith(".pkg"):
                highest = max(highest, int(name.split(".")[1]))
        return highest + 1

    def subscription_list(self, agent_id: str) -> list[dict[str, Any]]:
        """What the agent is subscribed to, as the signed ``subscriptions`` document carries it."""
        entries = []
        for sub in self.registry.subscriptions():
            if not any(s.agent == agent_id for s in sub.subscribers):
                continue
            entries.append(
                {
                    "subscription": sub.id,
                    "catalog": sub.catalog.header_fields(),
                    "schema": sub.dictionary_json(),
                    "target": sub.target_for(agent_id),
                    "provision_method": sub.catalog.provision_method,
                }
            )
        return entries

    def write_subscription_list(self, agent_id: str) -> Path:
        """The signed subscription list (kind ``subscriptions``) in the agent's ``control/``."""
        payload = json.dumps(
            {
                "format": 1,
                "agent_id": agent_id,
                "time": now_utc(),
                "subscriptions": self.subscription_list(agent_id),
            },
            ensure_ascii=False,
            sort_keys=True,
        ).encode("utf-8")
        control = self.exchange(agent_id) / CONTROL
        sequence = self._control_sequence(agent_id, SUBSCRIPTIONS_CHANNEL)
        package_id = new_package_id()
        path = control / package_filename(SUBSCRIPTIONS_CHANNEL, sequence, package_id)
        with PackageWriter(
            path,
            kind=KIND_SUBSCRIPTIONS,
            sender=self.keys,
            recipient=self.bundle(agent_id),
            subscription=SUBSCRIPTIONS_CHANNEL,
            sequence=sequence,
            builds_on=sequence - 1 if sequence > 1 else None,
            package_id=package_id,
            counts={"subscriptions": len(self.subscription_list(agent_id))},
            suite=self.registry.agent_suite(agent_id),
        ) as writer:
            writer.write(payload)
        return path

    # ------------------------------------------------------------------ publish
    def publish(self, subscription_id: str | None = None, *, snapshot: bool = False) -> list[PublishResult]:
        subs = (
            [self.registry.subscription(subscription_id)]
            if subscription_id
            else self.registry.subscriptions()
        )
        results = []
        for sub in subs:
            try:
                results.append(self.publish_one(sub, snapshot=snapshot))
            except Exception as exc:  # one bad source must not stop the others
                results.append(PublishResult(sub.id, error=f"{type(exc).__name__}: {exc}"))
        return results

    def publish_one(self, sub: Subscription, *, snapshot: bool = False) -> PublishResult:
        state = PublishState(self.registry.state_path(sub.id))
        try:
            self.recover(state)
            result = PublishResult(sub.id)
            requests = pending_requests(self, sub.id, state)
            with state.transaction():
                self._publish_locked(sub, state, snapshot, requests, result)
            self.place(state)
            return result
        finally:
            state.close()

    def _spool(self, sub_id: str, what: str) -> Path:
        self.registry.spool_dir.mkdir(parents=True, exist_ok=True)
        return self.registry.spool_dir / f"{sub_id}.{what}.{new_package_id()}.plain"

    def _publish_locked(
        self,
        sub: Subscription,
        state: PublishState,
        snapshot: bool,
        requests: list[tuple[str, str, dict[str, Any]]],
        result: PublishResult,
    ) -> None:
        sequences = state.all_sequences()
        active = [s.agent for s in sub.subscribers if not sequences.get(s.agent, (0, False))[1]]
        resync, buckets, files = self._sort_requests(sub, active, requests)
        plain_files: list[Path] = []
        fingerprint = sub.capture_fingerprint()
        if state.get("capture_fingerprint") not in (None, fingerprint):
            snapshot = True  # columns, filter or source changed: the published state no longer applies
        state.put("capture_fingerprint", fingerprint)
        try:
            if sub.catalog.provision_method == "table":
                self._publish_table(
                    sub, state, snapshot, active, sequences, resync, buckets, result, plain_files
                )
            else:
                self._publish_files(sub, state, snapshot, active, sequences, resync, files, result)
        finally:
            for path in plain_files:
                path.unlink(missing_ok=True)
        for agent, request_id, _req in requests:
            state.mark_request(request_id, agent, now_utc())

    @staticmethod
    def _sort_requests(
        sub: Subscription, active: list[str], requests: list[tuple[str, str, dict[str, Any]]]
    ) -> tuple[set[str], dict[str, set[int]], dict[str, tuple[set[str], set[int]]]]:
        """(agents to resync, table buckets to resend per agent, (files, buckets) per agent).

        A request from an agent that no longer receives the subscription (removed or revoked)
        is ignored. ``resend_buckets`` names digest buckets: of a table subscription, their rows
        are resent; of a file subscription, their files, and the request's ``files`` (the agent's
        own files in those buckets) too. ``resend_files`` names files. A request naming nothing
        usable is answered with a snapshot, as is ``resync``, which also wins over any other
        request of the same agent.
        """
        resync: set[str] = set()
        buckets: dict[str, set[int]] = {}
        files: dict[str, tuple[set[str], set[int]]] = {}
        table = sub.catalog.provision_method == "table"
        for agent, request_id, req in requests:
            kind = req["request"]
            if agent not in active:
                log.warning(
                    "request %s (%s) from agent %s ignored: the agent no longer receives subscription %s",
                    request_id,
                    kind,
                    agent,
                    sub.id,
                )
                continue
            named = _named_buckets(req.get("buckets")) if kind == "resend_buckets" else set()
            paths = _named_files(req.get("files")) if not table and kind != "resync" else set()
            if table and named:
                buckets.setdefault(agent, set()).update(named)
            elif not table and (named or (kind == "resend_files" and paths)):
                wanted = files.setdefault(agent, (set(), set()))
                wanted[0].update(paths)
                wanted[1].update(named)
            else:
                if kind != "resync":
                    log.warning(
                        "request %s (%s) from agent %s names nothing to resend (buckets %r, files %r): "
                        "sending a snapshot",
                        request_id,
                        kind,
                        agent,
                        req.get("buckets"),
                        req.get("files"),
                    )
                resync.add(agent)
        for agent in resync:
            buckets.pop(agent, None)
            files.pop(agent, None)
        return resync, buckets, files

    def _publish_table(
        self,
        sub: Subscription,
        state: PublishState,
        snapshot: bool,
        active: list[str],
        sequences: dict[str, tuple[int, bool]],
        resync: set[str],
        buckets: dict[str, set[int]],
        result: PublishResult,
        plain_files: list[Path],
    ) -> None:
        reader = TableReader(sub)
        try:
            capture = TableCapture(sub, state, reader)
            if not snapshot and capture.initialised:
                # Before the capture: the named buckets as published so far (what the agent's
                # position describes); this run's delta then follows on top of it.
                for agent in active:
                    if agent in buckets and agent in sequences:
                        part = capture.buckets_from_state(self._spool(sub.id, "buckets"), buckets[agent])
                        plain_files.append(part.plaintext)
                        sequence = sequences[agent][0] + 1
                        self._write_table_package(sub, state, agent, sequence, part)
                        sequences[agent] = (sequence, False)
                        result.packages.append((agent, sequence, "buckets"))
            if snapshot or not capture.initialised:
                change = capture.snapshot(self._spool(sub.id, "snapshot"))
            else:
                change = capture.delta(self._spool(sub.id, "delta"))
        finally:
            reader.close()
        plain_files.append(change.plaintext)
        full: TableChange | None = change if change.kind == "snapshot" else None
        result.upserts, result.deletes = change.upserts, change.deletes
        for agent in active:
            needs_snapshot = agent not in sequences or agent in resync
            if needs_snapshot and full is None:
                full = capture.snapshot_from_state(self._spool(sub.id, "state"))
                plain_files.append(full.plaintext)
            chosen = full if needs_snapshot or change.kind == "snapshot" else change
            assert chosen is not None
            if chosen.empty:
                continue
            sequence = sequences.get(agent, (0, False))[0] + 1
            self._write_table_package(sub, state, agent, sequence, chosen)
            result.packages.append((agent, sequence, chosen.kind))

    def _write_table_package(
        self,
        sub: Subscription,
        state: PublishState,
        agent: str,
        sequence: int,
        change: TableChange,
    ) -> None:
        expected = change.expected_state
        catalog = sub.catalog.header_fields()
        target = sub.target_for(agent)
        if target:
            catalog["target_table"] = target

        def body(writer: PackageWriter) -> None:
            with open(change.plaintext, "rb") as plain:
                while block := plain.read(COPY_BLOCK):
                    writer.write(block)

        self._write_package(
            state,
            agent,
            sub.id,
            sequence,
            change.kind,
            body,
            catalog=catalog,
            schema=RowCodec(sub.dictionary).schema(),
            counts={"rows_upserted": change.upserts, "rows_deleted": change.deletes},
            expected_state=expected,
            manifest=None,
            directory=INBOX,
            replace_buckets=change.replace_buckets,
        )

    def _publish_files(
        self,
        sub: Subscription,
        state: PublishState,
        snapshot: bool,
        active: list[str],
        sequences: dict[str, tuple[int, bool]],
        resync: set[str],
        resend: dict[str, tuple[set[str], set[int]]],
        result: PublishResult,
    ) -> None:
        capture = FileCapture(sub, state)
        change = capture.capture(snapshot=snapshot)
        full: FileChange | None = change if change.manifest.is_snapshot else None
        result.files = len(change.manifest.entries)
        for agent in active:
            needs_snapshot = agent not in sequences or agent in resync
            # After the capture: the resent files are read from the source as now published.
            named = None
            if agent in resend and not needs_snapshot and not change.manifest.is_snapshot:
                named = capture.named_from_state(*resend[agent])
                if named is None:
                    log.warning(
                        "agent %s asks for files the platform does not publish, or more than one package "
                        "holds: sending a snapshot",
                        agent,
                    )
                    needs_snapshot = True
            if needs_snapshot and full is None:
                full = capture.snapshot_from_state()
            chosen = full if needs_snapshot else change
            assert chosen is not None
            sequence = sequences.get(agent, (0, False))[0]
            for each in (chosen, named):
                if each is not None and not each.empty:
                    sequence = self._write_files_packages(sub, state, agent, sequence, each, result)

    def _write_files_packages(
        self,
        sub: Subscription,
        state: PublishState,
        agent: str,
        sequence: int,
        chosen: FileChange,
        result: PublishResult,
    ) -> int:
        """One package per part of ``chosen`` after ``sequence``; returns the last sequence."""
        for part in chosen.parts:  # more than one only beyond the per-package entry limit
            sequence += 1
            manifest = part.manifest
            self._write_package(
                state,
                agent,
                sub.id,
                sequence,
                KIND_FILES,
                lambda writer, m=manifest, c=chosen: c.write_payload(writer, m),
                catalog=sub.catalog.header_fields(),
                schema=[],
                counts={"files": len(manifest.entries), "files_removed": len(manifest.removed)},
                expected_state=part.summary,
                manifest=manifest.to_json(),
                directory=INBOX,
            )
            result.packages.append((agent, sequence, KIND_FILES))
        return sequence

    def _write_package(
        self,
        state: PublishState,
        agent: str,
        channel: str,
        sequence: int,
        kind: str,
        body: Any,
        *,
        catalog: dict[str, Any],
        schema: list[dict[str, Any]],
        counts: dict[str, int],
        expected_state: dict[str, Any] | None,
        manifest: dict[str, Any] | None,
        directory: str,
        replace_buckets: tuple[int, ...] | None = None,
    ) -> str:
        """Write one package into the spool and record it as pending (inside the state transaction)."""
        package_id = new_package_id()
        filename = package_filename(channel, sequence, package_id)
        # A delta (or a files delta) applies on top of the previous sequence; a snapshot or a
        # revocation stands alone.
        incremental = kind == "delta" or (
            kind == KIND_FILES and (manifest or {}).get("base_digest") is not None
        )
        builds_on = sequence - 1 if incremental and sequence > 1 else None
        with PackageWriter(
            self.registry.spool_dir / filename,
            kind=kind,
            sender=self.keys,
            recipient=self.bundle(agent),
            subscription=channel,
            sequence=sequence,
            builds_on=builds_on,
            package_id=package_id,
            catalog=catalog,
            schema=schema,
            counts=counts,
            expected_state=expected_state,
            manifest=manifest,
            replace_buckets=replace_buckets,
            suite=self.registry.agent_suite(agent),
        ) as writer:
            body(writer)
        digest = None
        if expected_state:
            digest = expected_state.get("digest")
        state.add_package(
            PackageRecord(
                package_id, agent, sequence, kind, filename, directory, "pending", now_utc(), digest, None
            )
        )
        state.set_sequence(agent, sequence, revoked=kind == KIND_REVOKE)
        return filename

    # ------------------------------------------------------------------ recovery and placing
    def recover(self, state: PublishState) -> None:
        """Finish placing committed packages; delete spool leftovers of uncommitted runs."""
        self.place(state)
        known = {r.filename for r in state.packages(status="pending")}
        spool = self.registry.spool_dir
        if not spool.exists():
            return
        for name in os.listdir(spool):
            if name in known:
                continue
            # Leftovers are ours only if they belong to this subscription's state file.
            owner = name.lstrip(".").split(".")[0]
            if owner == Path(state.path).stem and (is_temp_name(name) or name.endswith((".pkg", ".plain"))):
                (spool / name).unlink(missing_ok=True)

    def place(self, state: PublishState) -> None:
        for record in state.packages(status="pending"):
            source = self.registry.spool_dir / record.filename
            target_dir = self.exchange(record.agent) / record.directory
            target = target_dir / record.filename
            if source.exists():
                target_dir.mkdir(parents=True, exist_ok=True)
                # The spool is not setgid: give the package the directory's group (the agent's
                # SFTP group, docs/hub.md), as a file written there directly would get.
                os.chown(source, -1, target_dir.stat().st_gid)
                os.replace(source, target)
                _fsync_dir(target_dir)
            elif not target.exists():
                raise RegistryError(
                    f"committed package {record.filename} is missing from the spool and the inbox"
                )
            state.set_status(record.package_id, "placed")

    # ------------------------------------------------------------------ revoke
    def revoke(self, subscription_id: str, agent_id: str | None) -> list[tuple[str, str]]:
        sub = self.registry.subscription(subscription_id)
        agents = [agent_id] if agent_id else [s.agent for s in sub.subscribers]
        state = PublishState(self.registry.state_path(sub.id))
        written: list[tuple[str, str]] = []
        try:
            self.recover(state)
            with state.transaction():
                sequences = state.all_sequences()
                for agent in agents:
                    if agent not in {s.agent for s in sub.subscribers}:
                        raise RegistryError(f"agent {agent!r} does not subscribe to {sub.id}")
                    if sequences.get(agent, (0, False))[1]:
                        raise RegistryError(f"agent {agent!r} is already revoked from {sub.id}")
                    sequence = sequences.get(agent, (0, False))[0] + 1
                    reason = {"reason": "subscription revoked by the platform", "time": now_utc()}
                    payload = json.dumps(reason, ensure_ascii=False, sort_keys=True).encode("utf-8")
                    filename = self._write_package(
                        state,
                        agent,
                        sub.id,
                        sequence,
                        KIND_REVOKE,
                        lambda w, data=payload: w.write(data),
                        catalog=sub.catalog.header_fields(),
                        schema=[],
                        counts={},
                        expected_state=None,
                        manifest=None,
                        directory=INBOX,
                    )
                    written.append((agent, filename))
            self.place(state)
        finally:
            state.close()
        return written


def _named_buckets(value: Any) -> set[int]:
    """The digest buckets a request names (empty if it names none or any entry is not a bucket)."""
    if not isinstance(value, list) or not all(type(b) is int and 0 <= b < BUCKETS for b in value):
        return set()
    return set(value)


def _named_files(value: Any) -> set[str]:
    """The relative paths a request names (empty unless a list of strings)."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        return set()
    return set(value)


def _peek_id(document: str) -> str | None:
    """The ``id`` of a subscription document before validation (None if there is none)."""
    try:
        data = yaml.safe_load(document)
    except yaml.YAMLError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
