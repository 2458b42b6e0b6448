"""TableStore: apply table packages exactly once, keep digests, verify, purge.

Data flow for one package (``apply``): the header's schema is checked against the applied
one; the plaintext is stream-parsed (protocol.canonical), every row validated in batches,
hashed into the LtHash digest (protocol.digest) and written by the database's fast path
(one :class:`SqlDialect` per database). The rows, the new position and the new digest
commit in ONE transaction; a package at or below the position is skipped, one that does
not build on it is held. Snapshots load into a staging table and swap in atomically.

Where DDL is not transactional (MySQL/MariaDB, Oracle, DM) the swap is recorded first as
an *intent* in the state row; :meth:`TableStore.recover` (run before every apply) either
finishes it (the rename happened) or undoes it (it did not).
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connectors.stores.tables.buckets import apply_bucket_delta, replaced_buckets
from connectors.stores.tables.dialects import Batch, DeltaApplier, SnapshotLoader, SqlDialect, dialect_for
from connectors.stores.tables.errors import (
    DigestMismatch,
    PayloadMalformed,
    SchemaIncompatible,
    SubscriptionRevoked,
    TableEnvironmentError,
    TableStoreError,
    UnsupportedPackage,
)
from connectors.stores.tables.names import check_name, internal_name
from connectors.stores.tables.rowcheck import (
    KeyRegister,
    RowChecker,
    RowPipeline,
    StoredRowsDigest,
)
from connectors.stores.tables.schema import (
    added_columns,
    build_table,
    ddl_statements,
    schema_to_json,
    table_comment,
)
from connectors.stores.tables.state import (
    StateRow,
    all_states,
    delete_catalog,
    metadata,
    owner_of_table,
    read_state,
    write_catalog,
    write_state,
)
from protocol.canonical import (
    CanonicalError,
    ColumnSpec,
    RawBatch,
    Record,
    RecordFormatError,
    columns_from_schema,
    iter_raw_batches,
)
from protocol.digest import BATCH, DigestError, LtHash, mismatched_buckets

KIND_SNAPSHOT = "snapshot"
KIND_DELTA = "delta"
KIND_REVOKE = "revoke"


class TableHeader(Protocol):
    """What the store reads from a verified package header (``protocol.header.PackageHeader``)."""

    @property
    def kind(self) -> str: ...
    @property
    def package_id(self) -> str: ...
    @property
    def subscription(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def builds_on(self) -> int | None: ...
    @property
    def catalog(self) -> Mapping[str, Any]: ...
    @property
    def schema(self) -> list[Any]: ...
    @property
    def expected_state(self) -> Mapping[str, Any] | None: ...


@dataclass
class ApplyResult:
    """Outcome of :meth:`TableStore.apply` (``status``: applied, skipped, held, revoked)."""

    subscription_id: str
    table: str
    kind: str
    sequence: int
    package_id: str
    status: str
    rows_upserted: int = 0
    rows_deleted: int = 0
    rows: int = 0
    local_digest: dict[str, Any] | None = None
    expected_digest: dict[str, Any] | None = None
    match: bool | None = None
    mismatched_buckets: list[int] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    @property
    def held(self) -> bool:
        return self.status == "held"


@dataclass
class VerifyResult:
    """Digest recomputed from the table's actual contents, against what the agent applied."""

    subscription_id: str
    table: str
    rows: int
    local_digest: dict[str, Any]
    recorded_digest: dict[str, Any] | None
    expected_digest: dict[str, Any] | None
    match: bool
    mismatched_buckets: list[int]
    matches_expected: bool | None


@dataclass
class PurgeResult:
    subscription_id: str
    table: str
    rows_deleted: int
    table_dropped: bool
    sequence: int


@dataclass
class Position:
    subscription_id: str
    table: str
    sequence: int
    package_id: str | None
    digest: dict[str, Any] | None
    expected: dict[str, Any] | None
    applied_at: str | None
    revoked: bool


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TableStore:
    """The table store for one target database (a SQLAlchemy URL)."""

    def __init__(self, url: str | sa.URL, *, engine: Engine | None = None) -> None:
        sa_url = sa.make_url(url)
        probe = sa_url.get_dialect()()
        self.dialect: SqlDialect = dialect_for(probe)
        self.engine = engine or sa.create_engine(sa_url, pool_pre_ping=True, **self.dialect.engine_options())
        sa.event.listen(
            self.engine, "connect", lambda dbapi_conn, _record: self.dialect.on_connect(dbapi_conn)
        )
        sa.event.listen(self.engine, "begin", self.dialect.begin)
        self._ready = False

    def close(self) -> None:
        self.engine.dispose()

    # ---------------------------------------------------------------- public API
    def position(self, subscription_id: str) -> Position | None:
        """The subscription's applied sequence and digest, or None if never applied here."""
        self._ensure()
        with self.engine.connect() as conn:
            state = read_state(conn, subscription_id)
        if state is None:
            return None
        return Position(
            subscription_id,
            state.table_name,
            state.sequence,
            state.package_id,
            state.local_summary,
            state.expected_summary,
            state.applied_at,
            state.revoked_at is not None,
        )

    def apply(
        self, header: TableHeader, plaintext: IO[bytes] | Iterable[bytes], table: str | None = None
    ) -> ApplyResult:
        """Apply one verified table package exactly once (see module docstring).

        Raises :class:`PackageRejected` subclasses (quarantine; nothing changed) or
        :class:`TableEnvironmentError` / driver errors (retry later; nothing changed).
        """
        self._ensure()
        subscription = header.subscription
        self.recover(subscription)
        if header.kind == KIND_REVOKE:
            purged = self.purge(subscription)
            return ApplyResult(
                subscription,
                purged.table,
                header.kind,
                header.sequence,
                header.package_id,
                "revoked",
                rows_deleted=purged.rows_deleted,
            )
        if header.kind not in (KIND_SNAPSHOT, KIND_DELTA):
            raise UnsupportedPackage(f"a table store cannot apply a {header.kind!r} package")
        buckets = replaced_buckets(header)  # a bucket resend (connectors/stores/tables/buckets.py)
        try:
            columns = columns_from_schema(header.schema or [])
        except CanonicalError as exc:
            raise UnsupportedPackage(f"package schema: {exc}") from exc
        with self.engine.connect() as conn:
            state = read_state(conn, subscription)
        table = self._table_name(subscription, state, table)
        result = ApplyResult(subscription, table, header.kind, header.sequence, header.package_id, "applied")
        if state is not None and state.revoked_at is not None:
            raise SubscriptionRevoked(f"subscription {subscription!r} was revoked at {state.revoked_at}")
        current = state.sequence if state is not None else 0
        if header.sequence <= current:
            result.status, result.reason = "skipped", f"already at sequence {current}"
            return result
        if header.kind == KIND_DELTA:
            base = header.builds_on if header.builds_on is not None else header.sequence - 1
            if base != current:
                result.status = "held"
                result.reason = f"delta builds on sequence {base}, the table is at {current}"
                return result
        state = self._claim(subscription, table, columns, state)
        with self.engine.connect() as conn:
            exists = self._has_table(conn, table)
        # the schema the agent applied binds once there is a table (or a position) to protect
        added = added_columns(state.schema, columns) if state.sequence > 0 or exists else []
        result.added_columns = [c.name for c in added]
        expected = header.expected_state
        if header.kind == KIND_SNAPSHOT:
            if self.dialect.transactional_ddl:
                self._snapshot_transactional(header, plaintext, table, columns, result, expected)
            else:
                self._snapshot_with_intent(header, plaintext, table, columns, result, expected)
        else:
            if added:
                self._add_columns(subscription, table, columns, added)
            if buckets is None:
                self._delta(header, plaintext, table, columns, result, expected)
            else:
                apply_bucket_delta(self, header, plaintext, table, columns, result, expected, buckets)
        return result

    def verify(self, subscription_id: str) -> VerifyResult:
        """Recompute the digest from the table's contents; name the buckets that differ."""
        self._ensure()
        with self.engine.connect() as conn:
            state = read_state(conn, subscription_id)
            if state is None or state.revoked_at is not None:
                raise TableStoreError(f"subscription {subscription_id!r} has no table here")
            columns = columns_from_schema(state.schema)
            actual = self._hash_table(conn, state.table_name, columns)
        local = actual.summary()
        recorded = LtHash.from_bytes(state.digest) if state.digest else LtHash()
        buckets = mismatched_buckets(local, recorded.summary())
        expected = state.expected_summary
        return VerifyResult(
            subscription_id,
            state.table_name,
            actual.rows,
            local,
            recorded.summary(),
            expected,
            not buckets,
            buckets,
            None if expected is None else not mismatched_buckets(local, expected),
        )

    def purge(self, subscription_id: str) -> PurgeResult:
        """Revocation: drop the table and its agent tables' rows; leave a tombstone position."""
        self._ensure()
        self.recover(subscription_id)
        with self.engine.connect() as conn:
            state = read_state(conn, subscription_id)
            if state is None:
                with conn.begin():
                    write_state(
                        conn, subscription_id, table_name="", sequence=0, schema=[], revoked_at=_now()
                    )
                return PurgeResult(subscription_id, "", 0, False, 0)
            table = state.table_name
            exists = self._has_table(conn, table)
            rows = 0
            if exists:
                count = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {self.dialect.quote(table)}", ()).scalar()
                rows = int(count or 0)
                conn.rollback()
            with conn.begin():
                for name in (table, internal_name("stage", table, 0), internal_name("old", table, 0)):
                    if self._has_table(conn, name):
                        conn.exec_driver_sql(f"DROP TABLE {self.dialect.quote(name)}", ())
                delete_catalog(conn, table)
                write_state(
                    conn,
                    subscription_id,
                    digest=None,
                    local_summary=None,
                    expected_summary=None,
                    pending=None,
                    pending_digest=None,
                    revoked_at=_now(),
                )
        return PurgeResult(subscription_id, table, rows, exists, state.sequence)

    def recover(self, subscription_id: str | None = None) -> list[str]:
        """Finish or undo interrupted swaps (non-transactional DDL); returns what was done."""
        self._ensure()
        done: list[str] = []
        with self.engine.connect() as conn:
            states = [read_state(conn, subscription_id)] if subscription_id else all_states(conn)
            conn.rollback()
            for state in states:
                if state is not None and state.pending:
                    done.append(self._recover_swap(conn, state))
        return done

    # ---------------------------------------------------------------- claim & schema
    def _ensure(self) -> None:
        if not self._ready:
            with self.engine.begin() as conn:
                metadata.create_all(conn, checkfirst=True)
            self._ready = True

    def _table_name(self, subscription: str, state: StateRow | None, table: str | None) -> str:
        name = table or (state.table_name if state is not None and state.table_name else None)
        if not name:
            raise UnsupportedPackage(f"no target table configured for subscription {subscription!r}")
        check_name(name, "table")
        if state is not None and state.table_name and state.table_name != name:
            raise TableEnvironmentError(
                f"subscription {subscription!r} syncs into table {state.table_name!r}, not {name!r}"
            )
        return name

    def _claim(
        self, subscription: str, table: str, columns: Sequence[ColumnSpec], state: StateRow | None
    ) -> StateRow:
        """Record that the agent owns ``table`` before creating anything (committed on its own)."""
        if state is not None:
            return state
        with self.engine.begin() as conn:
            owner = owner_of_table(conn, table)
            if owner is not None and owner != subscription:
                raise TableEnvironmentError(f"table {table!r} already belongs to subscription {owner!r}")
            if self._has_table(conn, table):
                raise TableEnvironmentError(
                    f"table {table!r} exists and is not managed by the agent; refusing to touch it"
                )
            write_state(
                conn,
                subscription,
                table_name=table,
                sequence=0,
                schema=schema_to_json(columns),
                digest=LtHash().to_bytes(),
            )
            claimed = read_state(conn, subscription)
        assert claimed is not None
        return claimed

    def _has_table(self, conn: Connection, name: str) -> bool:
        return bool(sa.inspect(conn).has_table(name))

    def _create(
        self,
        conn: Connection,
        name: str,
        columns: Sequence[ColumnSpec],
        pk_name: str,
        catalog: Mapping[str, Any] | None,
    ) -> None:
        table = build_table(self.dialect, name, columns, pk_name=pk_name, comment=table_comment(catalog))
        for statement in ddl_statements(self.dialect, table):
            conn.exec_driver_sql(statement, ())

    def _add_columns(
        self, subscription: str, table: str, columns: Sequence[ColumnSpec], added: Sequence[ColumnSpec]
    ) -> None:
        """A compatible change: add the new nullable columns, rehash (every row gained NULLs)."""
        sa_table = build_table(self.dialect, table, columns, pk_name="pk")
        with self.engine.begin() as conn:
            present = {c["name"] for c in sa.inspect(conn).get_columns(table)}
            for column in added:
                if column.name not in present:
                    conn.exec_driver_sql(self.dialect.add_column_sql(table, sa_table.c[column.name]), ())
        with self.engine.begin() as conn:
            digest = self._hash_table(conn, table, columns)
            write_state(
                conn,
                subscription,
                schema=schema_to_json(columns),
                digest=digest.to_bytes(),
                local_summary=digest.summary(),
            )

    # ---------------------------------------------------------------- payload
    def _batches(
        self, plaintext: IO[bytes] | Iterable[bytes], columns: Sequence[ColumnSpec], kind: str
    ) -> Iterator[Batch]:
        """Validated batches of records, checked in this process (small repair packages)."""
        checker = RowChecker(columns, kind)
        unique = KeyRegister(kind)
        pending: list[Record] = []
        try:
            for raw in iter_raw_batches(plaintext):
                pending.extend(checker.parse(raw))
                if len(pending) >= BATCH:
                    checker.check(pending)
                    unique.add(checker.keys(pending))
                    yield Batch(pending)
                    pending = []
        except RecordFormatError as exc:
            raise PayloadMalformed(str(exc)) from exc
        if pending:
            checker.check(pending)
            unique.add(checker.keys(pending))
            yield Batch(pending)

    def _hash_table(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> LtHash:
        hasher = StoredRowsDigest(columns, schema_to_json(columns))
        try:
            hasher.feed(self.dialect.stored_rows(conn, table, columns))
            return hasher.finish()
        finally:
            hasher.close()

    # ---------------------------------------------------------------- snapshots
    def _load_staging(
        self,
        conn: Connection,
        plaintext: IO[bytes] | Iterable[bytes],
        staging: str,
        columns: Sequence[ColumnSpec],
    ) -> LtHash:
        """Load the snapshot while its rows are checked and hashed beside it (``rowcheck``)."""
        pipeline = RowPipeline(columns, schema_to_json(columns), KIND_SNAPSHOT)
        loader: SnapshotLoader = self.dialect.snapshot_loader(conn, staging, columns)
        try:
            with pipeline.precise_errors():
                for raw in self._framed(plaintext):
                    pipeline.submit(raw)
                    loader.load(Batch(raw=raw, width=len(columns)))
                loader.close()
            return pipeline.finish()
        except BaseException as exc:
            pipeline.close()
            loader.abort(exc)
            raise

    @staticmethod
    def _framed(plaintext: IO[bytes] | Iterable[bytes]) -> Iterator[RawBatch]:
        try:
            yield from iter_raw_batches(plaintext)
        except RecordFormatError as exc:
            raise PayloadMalformed(str(exc)) from exc

    def _check_snapshot_digest(
        self, digest: LtHash, expected: Mapping[str, Any] | None, result: ApplyResult
    ) -> None:
        local = digest.summary()
        result.local_digest, result.expected_digest, result.rows = (
            local,
            dict(expected) if expected else None,
            digest.rows,
        )
        result.rows_upserted = digest.rows
        if expected is None:
            return
        try:
            buckets = mismatched_buckets(local, expected)
        except DigestError as exc:
            raise UnsupportedPackage(f"expected_state: {exc}") from exc
        if buckets:
            raise DigestMismatch(
                f"snapshot rows do not match the header's expected digest in {len(buckets)} buckets "
                f"({local['rows']} rows, expected {expected.get('rows')})",
                buckets,
            )
        result.match = True

    def _commit_position(
        self,
        conn: Connection,
        header: TableHeader,
        table: str,
        columns: Sequence[ColumnSpec],
        digest: LtHash,
        result: ApplyResult,
        **extra: Any,
    ) -> None:
        now = _now()
        write_state(
            conn,
            header.subscription,
            table_name=table,
            sequence=header.sequence,
            package_id=header.package_id,
            schema=schema_to_json(columns),
            digest=digest.to_bytes(),
            local_summary=result.local_digest,
            expected_summary=result.expected_digest,
            applied_at=now,
            **extra,
        )
        write_catalog(conn, table, header.subscription, header.catalog, header.sequence, now)

    def _snapshot_transactional(
        self,
        header: TableHeader,
        plaintext: IO[bytes] | Iterable[bytes],
        table: str,
        columns: Sequence[ColumnSpec],
        result: ApplyResult,
        expected: Mapping[str, Any] | None,
    ) -> None:
        staging, old = internal_name("stage", table, 0), internal_name("old", table, 0)
        with self._translate_integrity(), self.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.dialect.quote(staging)}", ())
            self._create(conn, staging, columns, internal_name("pk", table, header.sequence), header.catalog)
            digest = self._load_staging(conn, plaintext, staging, columns)
            self._check_snapshot_digest(digest, expected, result)
            self._check_position_unchanged(conn, header.subscription, header.sequence)
            self.dialect.swap_in(conn, table, staging, old, self._has_table(conn, table))
            self._commit_position(conn, header, table, columns, digest, result)

    def _snapshot_with_intent(
        self,
        header: TableHeader,
        plaintext: IO[bytes] | Iterable[bytes],
        table: str,
        columns: Sequence[ColumnSpec],
        result: ApplyResult,
        expected: Mapping[str, Any] | None,
    ) -> None:
        staging, old = internal_name("stage", table, 0), internal_name("old", table, 0)
        q = self.dialect.quote
        with self.engine.connect() as conn:
            for name in (staging, old):
                if self._has_table(conn, name):
                    conn.exec_driver_sql(f"DROP TABLE {q(name)}", ())
            self._create(conn, staging, columns, internal_name("pk", table, header.sequence), header.catalog)
            conn.commit()
            try:
                with self._translate_integrity(), conn.begin():
                    digest = self._load_staging(conn, plaintext, staging, columns)
                self._check_snapshot_digest(digest, expected, result)
            except BaseException:
                conn.rollback()
                conn.exec_driver_sql(f"DROP TABLE {q(staging)}", ())
                conn.commit()
                raise
            live_exists = self._has_table(conn, table)
            conn.rollback()
            intent = {
                "table": table,
                "staging": staging,
                "old": old,
                "live_existed": live_exists,
                "sequence": header.sequence,
                "package_id": header.package_id,
                "schema": schema_to_json(columns),
                "catalog": dict(header.catalog or {}),
                "local_summary": result.local_digest,
                "expected_summary": result.expected_digest,
            }
            try:
                with conn.begin():
                    self._check_position_unchanged(conn, header.subscription, header.sequence)
                    write_state(conn, header.subscription, pending=intent, pending_digest=digest.to_bytes())
            except TableEnvironmentError:
                conn.exec_driver_sql(f"DROP TABLE {q(staging)}", ())
                conn.commit()
                raise
            self.dialect.rename_swap(conn, table, staging, old, live_exists)
            conn.commit()
            state = read_state(conn, header.subscription)
            conn.rollback()
            assert state is not None
            self._recover_swap(conn, state)

    def _recover_swap(self, conn: Connection, state: StateRow) -> str:
        """Finish (the rename happened) or undo (it did not) a recorded snapshot swap."""
        intent = state.pending
        assert intent is not None
        q = self.dialect.quote
        table, staging, old = intent["table"], intent["staging"], intent["old"]
        if self._has_table(conn, staging):
            conn.rollback()
            conn.exec_driver_sql(f"DROP TABLE {q(staging)}", ())
            if not self._has_table(conn, table) and self._has_table(conn, old):
                conn.exec_driver_sql(f"ALTER TABLE {q(old)} RENAME TO {q(table)}", ())
            conn.commit()
            with conn.begin():
                write_state(conn, state.subscription_id, pending=None, pending_digest=None)
            return f"undid the interrupted snapshot swap of {table!r} (sequence {intent['sequence']})"
        conn.rollback()
        with conn.begin():
            now = _now()
            write_state(
                conn,
                state.subscription_id,
                sequence=intent["sequence"],
                package_id=intent["package_id"],
                schema=intent["schema"],
                digest=state.pending_digest,
                local_summary=intent["local_summary"],
                expected_summary=intent["expected_summary"],
                applied_at=now,
                pending=None,
                pending_digest=None,
            )
            write_catalog(conn, table, state.subscription_id, intent["catalog"], intent["sequence"], now)
        if self._has_table(conn, old):
            conn.rollback()
            conn.exec_driver_sql(f"DROP TABLE {q(old)}", ())
            conn.commit()
        return f"finished the snapshot swap of {table!r} (sequence {intent['sequence']})"

    # ---------------------------------------------------------------- deltas
    def _delta(
        self,
        header: TableHeader,
        plaintext: IO[bytes] | Iterable[bytes],
        table: str,
        columns: Sequence[ColumnSpec],
        result: ApplyResult,
        expected: Mapping[str, Any] | None,
    ) -> None:
        with self.engine.connect() as conn:
            if not self._has_table(conn, table):
                state = read_state(conn, header.subscription)
                if state is not None and state.sequence > 0:
                    raise TableEnvironmentError(
                        f"table {table!r} is missing locally; a resync (snapshot) is needed"
                    )
                conn.rollback()
                with conn.begin():
                    self._create(
                        conn, table, columns, internal_name("pk", table, header.sequence), header.catalog
                    )
        with self._translate_integrity(), self.engine.begin() as conn:
            state = read_state(conn, header.subscription, for_update=True)
            if state is None or state.sequence != (
                header.sequence - 1 if header.builds_on is None else header.builds_on
            ):
                raise TableEnvironmentError("the position moved while the delta was being prepared; retry")
            digest = LtHash.from_bytes(state.digest) if state.digest else LtHash()
            schema = schema_to_json(columns)
            pipeline = RowPipeline(columns, schema, KIND_DELTA)
            replaced = StoredRowsDigest(columns, schema)  # the rows the delta overwrites or deletes
            applier: DeltaApplier = self.dialect.delta_applier(conn, table, columns)
            try:
                with pipeline.precise_errors():
                    for raw in self._framed(plaintext):
                        pipeline.submit(raw)
                        replaced.feed(applier.stage(Batch(raw=raw, width=len(columns))))
                    replaced.feed(applier.finish())
                digest = digest.difference(replaced.finish()).combine(pipeline.finish())
            except BaseException as exc:
                pipeline.close()
                replaced.close()
                applier.abort(exc)
                raise
            result.rows_upserted, result.rows_deleted, result.rows = (
                applier.upserted,
                applier.deleted,
                digest.rows,
            )
            self._record_delta_digest(result, digest, expected)
            self._commit_position(conn, header, table, columns, digest, result)

    @staticmethod
    def _record_delta_digest(result: ApplyResult, digest: LtHash, expected: Mapping[str, Any] | None) -> None:
        """The digest after a delta, against the signed one: a mismatch is reported, not refused."""
        local = digest.summary()
        result.local_digest = local
        result.expected_digest = dict(expected) if expected else None
        if expected is not None:
            try:
                result.mismatched_buckets = mismatched_buckets(local, expected)
            except DigestError as exc:
                raise UnsupportedPackage(f"expected_state: {exc}") from exc
            result.match = not result.mismatched_buckets

    # ---------------------------------------------------------------- helpers
    def _check_position_unchanged(self, conn: Connection, subscription: str, sequence: int) -> None:
        """Lock the state row; refuse if another applier moved the position meanwhile."""
        state = read_state(conn, subscription, for_update=True)
        if state is not None and state.sequence >= sequence:
            raise TableEnvironmentError(
                f"subscription {subscription!r} reached sequence {state.sequence} meanwhile"
            )

    def _translate_integrity(self) -> _IntegrityTranslator:
        return _IntegrityTranslator(self.engine)


class _IntegrityTranslator:
    """A duplicate key or NOT NULL violation raised by the database is a malformed package."""

    def __init__(self, engine: Engine) -> None:
        dbapi = engine.dialect.loaded_dbapi
        self.kinds: tuple[type[BaseException], ...] = (sa.exc.IntegrityError, dbapi.IntegrityError)

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None and isinstance(exc, self.kinds) and not isinstance(exc, TableStoreError):
            message = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise PayloadMalformed(f"the database refused the rows: {message}") from exc


__all__ = [
    "ApplyResult",
    "Position",
    "PurgeResult",
    "SchemaIncompatible",
    "TableHeader",
    "TableStore",
    "VerifyResult",
]
