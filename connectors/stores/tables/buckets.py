"""Applying a bucket resend: a table delta whose header names ``replace_buckets``.

The platform answers a ``resend_buckets`` request (the agent's digest differed in some
buckets) with every row it has published whose key falls in those buckets. Applying it
replaces exactly those buckets: local rows of those buckets that the package does not carry
are deleted, the package's rows are upserted, and the recorded digest takes the package's
digest for those buckets (the other 255-odd buckets keep theirs). All of it, the position and
the digest commit in ONE transaction, like any delta.

Which local rows belong to a bucket cannot be asked of the database (the bucket is a keyed
BLAKE3 hash of the canonical key), so the key columns of the table are streamed once and
hashed here; only keys of the named buckets are kept in memory (a few buckets' worth, the
size of the repair). A package row outside the named buckets, or a delete record, is a
malformed package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from connectors.stores.tables.dialects import Batch, DeltaApplier, drain
from connectors.stores.tables.errors import PayloadMalformed, TableEnvironmentError, UnsupportedPackage
from connectors.stores.tables.rowcheck import add_upserts
from connectors.stores.tables.state import read_state
from protocol.canonical import ColumnSpec, Record, canonicalizer, encode_values, key_indexes
from protocol.digest import BATCH, BUCKETS, LtHash, bucket_of

if TYPE_CHECKING:
    from connectors.stores.tables.store import ApplyResult, TableHeader, TableStore

KIND_DELTA = "delta"


def replaced_buckets(header: TableHeader) -> tuple[int, ...] | None:
    """The header's ``replace_buckets`` (None for an ordinary delta), checked again here."""
    value = getattr(header, "replace_buckets", None)
    if value is None:
        return None
    buckets = tuple(value)
    if (
        header.kind != KIND_DELTA
        or not buckets
        or any(type(b) is not int or not 0 <= b < BUCKETS for b in buckets)
        or len(set(buckets)) != len(buckets)
    ):
        raise UnsupportedPackage(f"replace_buckets {value!r} on a {header.kind!r} package is not usable")
    return buckets


def _key_text(values: Sequence[str | None], key_positions: Sequence[int]) -> str:
    return encode_values([values[i] for i in key_positions])


def local_keys_in(
    store: TableStore, conn: Connection, table: str, columns: Sequence[ColumnSpec], buckets: frozenset[int]
) -> dict[str, list[str | None]]:
    """Canonical key -> key values of every local row whose key is in ``buckets`` (one key scan)."""
    key_columns = [columns[i] for i in key_indexes(columns)]
    convert = [canonicalizer(c) for c in key_columns]
    found: dict[str, list[str | None]] = {}
    for row in store.dialect.select_all(conn, table, key_columns):
        values = [f(v) for f, v in zip(convert, row, strict=True)]
        text = encode_values(values)
        if bucket_of(text.encode("utf-8")) in buckets:
            found[text] = values
    return found


def _delete_batches(
    leftover: Mapping[str, list[str | None]], columns: Sequence[ColumnSpec], key_positions: Sequence[int]
) -> Iterator[Batch]:
    """``D`` records (key values, every other field NULL) for the local keys the package lacks."""
    records: list[Record] = []
    for values in leftover.values():
        full: list[str | None] = [None] * len(columns)
        for position, value in zip(key_positions, values, strict=True):
            full[position] = value
        records.append(Record("D", full, encode_values(full), 0))
        if len(records) >= BATCH:
            yield Batch(records)
            records = []
    if records:
        yield Batch(records)


def apply_bucket_delta(
    store: TableStore,
    header: TableHeader,
    plaintext: IO[bytes] | Iterable[bytes],
    table: str,
    columns: Sequence[ColumnSpec],
    result: ApplyResult,
    expected: Mapping[str, Any] | None,
    buckets: Sequence[int],
) -> None:
    """Replace the rows and digest of ``buckets`` by the package's (see module docstring)."""
    wanted = frozenset(buckets)
    key_positions = key_indexes(columns)
    with store.engine.connect() as conn:
        exists = store._has_table(conn, table)
        conn.rollback()
    if not exists:
        raise TableEnvironmentError(f"table {table!r} is missing locally; a resync (snapshot) is needed")
    with store._translate_integrity(), store.engine.begin() as conn:
        state = read_state(conn, header.subscription, for_update=True)
        if state is None or state.sequence != header.builds_on:
            raise TableEnvironmentError("the position moved while the delta was being prepared; retry")
        digest = LtHash.from_bytes(state.digest) if state.digest else LtHash()
        local = local_keys_in(store, conn, table, columns, wanted)
        fresh = LtHash()
        applier: DeltaApplier = store.dialect.delta_applier(conn, table, columns)
        try:
            for batch in store._batches(plaintext, columns, KIND_DELTA):
                for record in batch.records:
                    if record.op != "U":
                        raise PayloadMalformed(
                            f"a bucket resend carries only upserts; line {record.line} is a delete"
                        )
                    key = _key_text(record.values, key_positions)
                    bucket = bucket_of(key.encode("utf-8"))
                    if bucket not in wanted:
                        raise PayloadMalformed(
                            f"line {record.line}: key {[record.values[i] for i in key_positions]!r} is in "
                            f"digest bucket {bucket}, not one of the buckets the header replaces"
                        )
                    local.pop(key, None)
                add_upserts(fresh, batch.records, key_positions)
                for _old in applier.stage(batch):  # the old rows do not matter: the buckets are replaced
                    pass
            for batch in _delete_batches(local, columns, key_positions):
                for _old in applier.stage(batch):
                    pass
            drain(applier.finish())
        except BaseException as exc:
            applier.abort(exc)
            raise
        digest.replace_buckets(fresh, wanted)
        result.rows_upserted, result.rows_deleted, result.rows = fresh.rows, len(local), digest.rows
        store._record_delta_digest(result, digest, expected)
        store._commit_position(conn, header, table, columns, digest, result)
