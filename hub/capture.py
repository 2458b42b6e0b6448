"""Change capture for table subscriptions: what changed at the source since the last publish.

The published state (``rows`` in the subscription's state DB: canonical key -> canonical row)
is the reference. A capture writes the change as table-payload records (``U``/``D`` CSV lines,
docs/architecture.md "Canonical table payload") into a spool file and updates the published
state and its digest to match — all inside the caller's state transaction.

- snapshot: every live row of the source.
- delta with a cursor column: rows with ``cursor >= last cursor`` (``>=`` so rows sharing the
  last value are not lost), each compared with its published row, so a row already sent is not
  sent again; a soft-deleted row becomes a delete.
- deletes: one ``count(*)`` of the live source rows against the published count; only when
  they differ are the source's keys (keys only) streamed into a temporary table and anti-joined
  with the published keys.
- no cursor: a full diff (stream every row into a temporary table, join with the published state).
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hub.catalog import Subscription
from hub.rows import RowCodec, StateDigest
from hub.source import TableReader
from hub.state import PublishState
from protocol import canonical
from protocol.digest import bucket_of

INSERT_BATCH = 5000
_NOT_STAGED = {  # published rows whose key is not in a staged temporary table
    "live": "key NOT IN (SELECT key FROM live)",
    "seen": "key NOT IN (SELECT key FROM seen)",
    "ilive": "ikey NOT IN (SELECT ikey FROM ilive)",
}
RANGE_ROWS = 2000
"""A key range with at most this many published rows is compared row by row."""


KEY_MODULUS = 1_000_003
"""Range digests sum ``key % KEY_MODULUS``: same value in every SQL dialect, no overflow."""


def _integer_type(ctype: canonical.ColumnType) -> bool:
    """INT, BIGINT..., or NUMBER(p,0) / Oracle INTEGER (= NUMBER(38)): whole numbers."""
    return ctype.family == canonical.Family.INTEGER or (
        ctype.family == canonical.Family.DECIMAL and ctype.scale == 0
    )


def _scope(lo: int | None, hi: int | None) -> tuple[str, list[int]]:
    """SQL condition on the published integer key for the half-open range [lo, hi)."""
    conditions, args = ["1 = 1"], []
    if lo is not None:
        conditions.append("ikey >= ?")
        args.append(lo)
    if hi is not None:
        conditions.append("ikey < ?")
        args.append(hi)
    return " AND ".join(conditions), args


class CaptureError(RuntimeError):
    """The source cannot be captured as declared (duplicate keys, missing columns...)."""


@dataclass
class TableChange:
    """A change written to a spool file, ready to be packaged for each subscriber."""

    kind: str  # snapshot | delta
    plaintext: Path
    upserts: int
    deletes: int
    plaintext_bytes: int
    expected_state: dict[str, Any]
    replace_buckets: tuple[int, ...] | None = None  # a resend of these digest buckets

    @property
    def empty(self) -> bool:
        """Nothing to send. A bucket resend never is: even without rows it deletes the agent's."""
        return self.kind == "delta" and not self.replace_buckets and self.upserts == 0 and self.deletes == 0


# --------------------------------------------------------------- cursor values in the state DB


def encode_cursor(value: Any) -> dict[str, Any] | None:
    """A cursor value as tagged JSON, so it binds back with its own type."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": value}
    if isinstance(value, decimal.Decimal):
        return {"t": "decimal", "v": str(value)}
    if isinstance(value, float):
        return {"t": "float", "v": repr(value)}
    if isinstance(value, dt.datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    raise CaptureError(f"cursor values of type {type(value).__name__} are not supported")


def decode_cursor(tagged: dict[str, Any] | None) -> Any:
    if tagged is None:
        return None
    t, v = tagged["t"], tagged["v"]
    decoders: dict[str, Any] = {
        "bool": bool,
        "int": int,
        "decimal": decimal.Decimal,
        "float": float,
        "datetime": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "str": str,
    }
    return decoders[t](v)


# --------------------------------------------------------------- the spool writer


class _Spool:
    """Plaintext records of one change, on disk (0600) next to the packages being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.file: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)
        self.upserts = 0
        self.deletes = 0
        self.bytes = 0

    def upsert(self, line: str) -> None:
        data = ("U," + line + "\n").encode("utf-8")
        self.file.write(data)
        self.bytes += len(data)
        self.upserts += 1

    def delete(self, record: str) -> None:
        data = (record + "\n").encode("utf-8")
        self.file.write(data)
        self.bytes += len(data)
        self.deletes += 1

    def finish(self, kind: str, digest: dict[str, Any]) -> TableChange:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return TableChange(kind, self.path, self.upserts, self.deletes, self.bytes, digest)


# --------------------------------------------------------------- capture


class TableCapture:
    """Computes the next change of one table subscription against its published state."""

    def __init__(self, subscription: Subscription, state: PublishState, reader: TableReader) -> None:
        self.sub = subscription
        self.state = state
        self.db: sqlite3.Connection = state.db
        self.reader = reader
        self.codec = RowCodec(subscription.dictionary)
        cursor = subscription.table_source.cursor
        self.cursor_index = subscription.column_names.index(cursor) if cursor else None
        keys = self.codec.key_columns
        self.integer_key = len(keys) == 1 and _integer_type(keys[0].type)
        # Without a cursor, row hashes computed by the source make range digests see updates.
        self.hashing = cursor is None and self.integer_key and reader.row_hash is not None

    @property
    def initialised(self) -> bool:
        return self.state.get_blob("table_digest") is not None

    def published_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM rows").fetchone()[0])

    def _save(self, digest: StateDigest, cursor: Any) -> dict[str, Any]:
        self.state.put_blob("table_digest", digest.to_bytes())
        self.state.put("cursor", encode_cursor(cursor))
        return digest.summary()

    def _digest(self) -> StateDigest:
        saved = self.state.get_blob("table_digest")
        return StateDigest.empty() if saved is None else StateDigest.from_bytes(saved)

    def _bump(self, best: Any, values: Sequence[Any]) -> Any:
        if self.cursor_index is None:
            return None
        value = values[self.cursor_index]
        if value is None:
            return best
        return value if best is None or value > best else best

    # ---------------------------------------------------------- snapshot from the source
    def snapshot(self, spool_path: Path) -> TableChange:
        """Read every live row: the new published state is exactly the source."""
        spool = _Spool(spool_path)
        digest = StateDigest.empty()
        self.db.execute("DELETE FROM rows")
        best: Any = None
        batch: list[tuple[str, str, int | None]] = []
        for row in self.reader.rows(with_hash=self.hashing):
            values, shash = self._split_hash(row)
            key, line = self.codec.encode(values)
            batch.append((key, line, shash))
            spool.upsert(line)
            digest.add(key, line)
            best = self._bump(best, values)
            if len(batch) >= INSERT_BATCH:
                self._insert_new(batch)
                batch = []
        self._insert_new(batch)
        return spool.finish("snapshot", self._save(digest, best))

    def _split_hash(self, row: Sequence[Any]) -> tuple[Sequence[Any], int | None]:
        """A row read with the source's row hash appended: (values, hash)."""
        if self.hashing:
            return row[:-1], int(row[-1])
        return row, None

    def _insert_new(self, batch: list[tuple[str, str, int | None]]) -> None:
        try:
            self.db.executemany("INSERT INTO rows (key, line, shash) VALUES (?, ?, ?)", batch)
        except sqlite3.IntegrityError:
            raise CaptureError(
                f"subscription {self.sub.id}: the source returned the same primary key twice; "
                f"the dictionary's primary key {self.sub.key_columns} is not unique in the source"
            ) from None

    # ---------------------------------------------------------- snapshot from the published state
    def snapshot_from_state(self, spool_path: Path) -> TableChange:
        """The published state as a snapshot (late subscribers, resync requests)."""
        spool = _Spool(spool_path)
        for (line,) in self.db.execute("SELECT line FROM rows ORDER BY key"):
            spool.upsert(line)
        return spool.finish("snapshot", self._digest().summary())

    # ---------------------------------------------------------- named buckets from the published state
    def buckets_from_state(self, spool_path: Path, buckets: Iterable[int]) -> TableChange:
        """Every published row whose key is in one of ``buckets`` (a resend_buckets request).

        The published state is the reference the expected digest describes (as for a resync
        snapshot), so the rows and the digest agree whatever the source did since. One pass over
        the published keys: the bucket is a hash of the canonical key (``protocol.digest``), which
        SQL cannot compute, so each key is hashed here; only the matching lines are kept.
        """
        wanted = frozenset(buckets)
        spool = _Spool(spool_path)
        for key, line in self.db.execute("SELECT key, line FROM rows ORDER BY key"):
            if bucket_of(key.encode("utf-8")) in wanted:
                spool.upsert(line)
        change = spool.finish("delta", self._digest().summary())
        change.replace_buckets = tuple(sorted(wanted))
        return change

    # ---------------------------------------------------------- delta
    def delta(self, spool_path: Path) -> TableChange:
        if self.cursor_index is None:
            return self.full_diff(spool_path)
        spool = _Spool(spool_path)
        digest = self._digest()
        last = decode_cursor(self.state.get("cursor"))
        best = last
        rows = self.reader.changed_since(last) if last is not None else self._all_as_changed()
        for values, soft_deleted in rows:
            best = self._bump(best, values)
            key, line = self.codec.encode(values)
            found = self.db.execute("SELECT line FROM rows WHERE key = ?", (key,)).fetchone()
            old = None if found is None else found[0]
            if soft_deleted:
                if old is not None:
                    self._delete(spool, digest, key, old)
                continue
            if old == line:
                continue  # already published: shares the last cursor value, or only unsent columns changed
            self.db.execute(
                "INSERT INTO rows (key, line) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET line = excluded.line",
                (key, line),
            )
            if old is not None:
                digest.remove(key, old)
            digest.add(key, line)
            spool.upsert(line)
        if self.integer_key and self._keys_fit_int64():
            self._reconcile_ranges(spool, digest)
        elif self.reader.count() != self.published_count():
            self._reconcile_keys(spool, digest)
        return spool.finish("delta", self._save(digest, best))

    def _all_as_changed(self) -> Iterator[tuple[Sequence[Any], bool]]:
        """Every row had a NULL cursor at the last publish: treat all rows as changed."""
        for values in self.reader.rows():
            yield values, False

    def _delete_missing_from(
        self, staged: str, spool: _Spool, digest: StateDigest, scope: tuple[int | None, int | None]
    ) -> None:
        """Delete every published row in the key range whose key is not in the staged table."""
        self.db.execute("DROP TABLE IF EXISTS temp.gone")
        condition, args = _scope(*scope)
        sql = "CREATE TEMP TABLE gone AS SELECT key, line FROM rows WHERE "
        self.db.execute(sql + _NOT_STAGED[staged] + " AND " + condition, args)
        for key, line in self.db.execute("SELECT key, line FROM temp.gone ORDER BY key"):
            digest.remove(key, line)
            spool.delete(self.codec.delete_record(key))
        self.db.execute("DELETE FROM rows WHERE key IN (SELECT key FROM temp.gone)")
        self.db.execute("DROP TABLE temp.gone")

    def _delete(self, spool: _Spool, digest: StateDigest, key: str, old_line: str) -> None:
        self.db.execute("DELETE FROM rows WHERE key = ?", (key,))
        digest.remove(key, old_line)
        spool.delete(self.codec.delete_record(key))

    def _stage(self, name: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
        """Stream rows into a temporary table keyed by its first column (on disk, bounded memory)."""
        self.db.execute(f"DROP TABLE IF EXISTS temp.{name}")
        cols = ", ".join(columns)
        self.db.execute(f"CREATE TEMP TABLE {name} ({cols}, PRIMARY KEY ({columns[0]})) WITHOUT ROWID")
        sql = f"INSERT INTO temp.{name} VALUES ({', '.join('?' * len(columns))})"  # noqa: S608 - constant names
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= INSERT_BATCH:
                self._stage_batch(sql, batch)
                batch = []
        self._stage_batch(sql, batch)

    def _stage_batch(self, sql: str, batch: list[tuple[Any, ...]]) -> None:
        try:
            self.db.executemany(sql, batch)
        except sqlite3.IntegrityError:
            raise CaptureError(
                f"subscription {self.sub.id}: the source returned the same primary key twice"
            ) from None

    def _keys_fit_int64(self) -> bool:
        """SQLite saturates CAST beyond 64 bits: range digests only while every key fits (index lookups)."""
        low, high = self.db.execute("SELECT min(ikey), max(ikey) FROM rows").fetchone()
        limit = 2**62
        return low is None or (-limit < low and high < limit)

    def _published_stats(self, lo: int | None, hi: int | None, with_hash: bool) -> tuple[int, ...]:
        condition, args = _scope(lo, hi)
        sql = "SELECT count(*), coalesce(sum(ikey % ?), 0), coalesce(sum(shash), 0) FROM rows WHERE "
        row = self.db.execute(sql + condition, [KEY_MODULUS, *args]).fetchone()
        return tuple(int(v) for v in (row if with_hash else row[:2]))

    def _split_point(self, lo: int | None, hi: int | None, count: int) -> int | None:
        condition, args = _scope(lo, hi)
        sql = "SELECT ikey FROM rows WHERE "
        ordered = sql + condition + " ORDER BY ikey LIMIT 1 OFFSET ?"
        row = self.db.execute(ordered, [*args, count // 2]).fetchone()
        return None if row is None or row[0] == lo else int(row[0])

    def _reconcile_ranges(self, spool: _Spool, digest: StateDigest) -> None:
        """Integer keys: compare range digests per key range, source vs published.

        The digest is (count, sum of keys mod KEY_MODULUS) — index-only — and, for a subscription
        without a cursor, the sum of the source database's own row hashes (recorded per published
        row when it was read), which also reveals updates.

        Ranges that agree are done; a range that differs is split at the median published key
        until it is small, then diffed row by row. Finds deletes (and rows that appeared
        without moving the cursor) with a handful of index-range aggregates per difference
        instead of reading the table. With a cursor, a differing leaf range is compared by keys
        only (updates came through the cursor); without one, by rows. Many scattered differences
        would cost more queries than one pass over the table: past a budget of about two queries
        per leaf range, the rest is done in one pass (keys only with a cursor, rows without).
        """
        hashing = self.hashing
        leaves = self.published_count() // RANGE_ROWS + 1
        budget = 2 * leaves + 16
        stack: list[tuple[int | None, int | None]] = [(None, None)]
        while stack:
            lo, hi = stack.pop()
            budget -= 1
            published = self._published_stats(lo, hi, hashing)
            source = self.reader.range_stats(lo, hi, KEY_MODULUS, hashing)
            if source == published:
                continue
            # At least this many rows are gone: spread over many leaves, bisecting would visit
            # most of them several times over.
            many_deletes = (lo, hi) == (None, None) and published[0] - source[0] > leaves // 4
            if budget < 0 or many_deletes:
                self._one_pass(spool, digest)
                return
            middle = self._split_point(lo, hi, published[0]) if published[0] > RANGE_ROWS else None
            if middle is not None:
                stack += [(lo, middle), (middle, hi)]
            elif hashing:
                self._diff_into(spool, digest, self.reader.rows_in_range(lo, hi, with_hash=True), (lo, hi))
            else:
                self._reconcile_keys(spool, digest, (lo, hi))

    def _one_pass(self, spool: _Spool, digest: StateDigest) -> None:
        """The whole table in one pass: keys only with a cursor, rows (with hashes) without."""
        if self.hashing:
            self._diff_into(spool, digest, self.reader.rows(with_hash=True), (None, None))
        else:
            self._reconcile_keys(spool, digest)

    def _reconcile_keys(
        self, spool: _Spool, digest: StateDigest, scope: tuple[int | None, int | None] = (None, None)
    ) -> None:
        """Keys only: published keys missing at the source are deletes; source keys missing from
        the published state (rows that appeared without moving the cursor) are read in full."""
        lo, hi = scope
        source_keys = self.reader.live_keys(lo, hi) if scope != (None, None) else self.reader.live_keys()
        if self.integer_key and self._keys_fit_int64():
            # Integer keys compare as integers: no canonical text per key, the published index serves.
            self._stage("ilive", ["ikey"], ((int(k[0]),) for k in source_keys))
            self._delete_missing_from("ilive", spool, digest, scope)
            count_sql = "SELECT count(*) FROM temp.ilive WHERE ikey NOT IN (SELECT ikey FROM rows)"
            staged = "ilive"
        else:
            self._stage("live", ["key"], ((self.codec.key_of(k),) for k in source_keys))
            self._delete_missing_from("live", spool, digest, scope)
            count_sql = "SELECT count(*) FROM temp.live WHERE key NOT IN (SELECT key FROM rows)"
            staged = "live"
        missing = self.db.execute(count_sql).fetchone()[0]
        self.db.execute("DROP TABLE temp." + staged)
        if missing:
            rows = self.reader.rows_in_range(lo, hi) if scope != (None, None) else self.reader.rows()
            self._diff_into(spool, digest, rows, scope)

    # ---------------------------------------------------------- full diff
    def full_diff(self, spool_path: Path) -> TableChange:
        """No cursor: key-range digests with the source's row hashes where the key and the
        database allow it (only differing ranges are read), else every row is compared."""
        spool = _Spool(spool_path)
        digest = self._digest()
        if self.hashing and self._keys_fit_int64() and self._hashes_complete():
            self._reconcile_ranges(spool, digest)
            best = None
        else:
            best = self._diff_into(spool, digest, self.reader.rows(with_hash=self.hashing), (None, None))
        return spool.finish("delta", self._save(digest, best))

    def _hashes_complete(self) -> bool:
        """Every published row carries its source hash (false right after hashing was enabled)."""
        return self.db.execute("SELECT 1 FROM rows WHERE shash IS NULL LIMIT 1").fetchone() is None

    def _diff_into(
        self,
        spool: _Spool,
        digest: StateDigest,
        source_rows: Iterator[Sequence[Any]],
        scope: tuple[int | None, int | None],
    ) -> Any:
        """Compare source rows with the published rows of the same key range, row by row."""
        best: list[Any] = [None]

        def staged() -> Iterator[tuple[str, str, int | None]]:
            for row in source_rows:
                values, shash = self._split_hash(row)
                best[0] = self._bump(best[0], values)
                key, line = self.codec.encode(values)
                yield key, line, shash

        self._stage("seen", ["key", "line", "shash"], staged())
        self._delete_missing_from("seen", spool, digest, scope)
        changed = self.db.execute(
            "SELECT s.key, s.line, r.line FROM temp.seen s LEFT JOIN rows r ON r.key = s.key "
            "WHERE r.line IS NULL OR r.line != s.line ORDER BY s.key"
        )
        for key, line, old in changed:
            if old is not None:
                digest.remove(key, old)
            digest.add(key, line)
            spool.upsert(line)
        self.db.execute(
            "INSERT INTO rows (key, line, shash) SELECT s.key, s.line, s.shash FROM temp.seen s "
            "LEFT JOIN rows r ON r.key = s.key "
            "WHERE r.line IS NULL OR r.line != s.line OR r.shash IS NOT s.shash "
            "ON CONFLICT (key) DO UPDATE SET line = excluded.line, shash = excluded.shash"
        )
        self.db.execute("DROP TABLE temp.seen")
        return best[0]
