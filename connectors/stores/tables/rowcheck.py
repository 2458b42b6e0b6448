"""Validating and hashing payload rows, on every core.

Parsing, validating and hashing a row costs the agent several times what the database
spends storing it (docs/tables.md, "Where the time goes"). All three depend on the row
alone and the table digest is a sum, so a :class:`RowPipeline` sends framed chunks of the
payload to worker processes while the caller feeds the database, then adds up the
workers' partial digests. The first :data:`TASK_ROWS` rows are always checked in the
calling process, so a small package never starts a worker; the pool, once started, is
kept for the life of the process (the daemon applies many packages).

The database may receive a chunk before its check has finished: that is safe because the
rows, the position and the digest commit in one transaction, and :meth:`RowPipeline.finish`
(which raises the first rejection) runs before the commit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, cast

from connectors.stores.tables.dialects.base import CanonicalText, StoredRows
from connectors.stores.tables.errors import (
    PackageRejected,
    PayloadMalformed,
    RowRejected,
    TableStoreError,
)
from protocol.canonical import (
    ColumnSpec,
    ColumnValidator,
    RawBatch,
    Record,
    RecordFormatError,
    canonicalizer,
    columns_from_schema,
    encode_values,
    key_indexes,
    parse_raw_batch,
    simple_columns,
    to_python,
)
from protocol.digest import LtHash, row_item
from protocol.fastrows import FastRows

log = logging.getLogger(__name__)

KIND_SNAPSHOT = "snapshot"
TASK_ROWS = 8192
"""Rows per worker task: large enough that the returned partial digest (514 KiB) is cheap
per row (64 bytes), small enough that the tasks in flight stay a few MiB."""


class RowChecker:
    """Validation and digest of one payload's rows, batch by batch (any process)."""

    def __init__(self, columns: Sequence[ColumnSpec], kind: str) -> None:
        self.columns = list(columns)
        self.kind = kind
        self.width = len(self.columns)
        self.validators = [ColumnValidator(c) for c in self.columns]
        self.key_positions = key_indexes(self.columns)
        self.key_validators = [self.validators[i] for i in self.key_positions]
        self.fast = FastRows.for_columns(self.columns)

    def parse(self, batch: RawBatch) -> list[Record]:
        try:
            return parse_raw_batch(batch, self.width)
        except RecordFormatError as exc:
            raise PayloadMalformed(str(exc)) from exc

    def check(self, records: list[Record]) -> None:
        """Raise RowRejected / PayloadMalformed for the first record breaking the schema."""
        upserts = [r for r in records if r.op == "U"]
        deletes = [r for r in records if r.op == "D"] if len(upserts) != len(records) else []
        if deletes and self.kind == KIND_SNAPSHOT:
            raise PayloadMalformed(f"snapshot payload has a delete record (line {deletes[0].line})")
        columns, key_positions = self.columns, self.key_positions
        if upserts:
            value_columns = list(zip(*[r.values for r in upserts], strict=True))
            for validator, values, column in zip(self.validators, value_columns, columns, strict=True):
                failure = validator.check(values)
                if failure is not None:
                    raise self._reject(upserts[failure[0]], column, failure[1])
        if deletes:
            for position, validator in zip(key_positions, self.key_validators, strict=True):
                failure = validator.check([r.values[position] for r in deletes])
                if failure is not None:
                    raise self._reject(deletes[failure[0]], columns[position], failure[1])
            key_set = set(key_positions)
            for row in deletes:
                if any(v is not None for i, v in enumerate(row.values) if i not in key_set):
                    raise PayloadMalformed(f"delete record at line {row.line} carries non-key values")

    def _reject(self, row: Record, column: ColumnSpec, reason: str) -> RowRejected:
        return RowRejected([row.values[i] for i in self.key_positions], column.name, reason, line=row.line)

    def keys(self, records: list[Record]) -> list[bytes]:
        return record_keys(records, self.key_positions)

    def add(self, digest: LtHash, records: list[Record]) -> None:
        add_upserts(digest, records, self.key_positions)

    def check_and_hash(self, batches: Sequence[RawBatch], digest: LtHash) -> list[bytes]:
        """Check and hash ``batches`` into ``digest``; a delta's keys are returned (duplicates)."""
        keys: list[bytes] = []
        for batch in batches:
            if self.kind == KIND_SNAPSHOT:
                if self.fast is not None and self.fast.check_and_hash(batch.records, digest):
                    continue
                if self._snapshot_fast(batch, digest):
                    continue
            elif self.fast is not None:
                fast_keys = self.fast.check_and_hash_delta(batch.records, digest)
                if fast_keys is not None:
                    keys.extend(fast_keys)
                    continue
            records = self.parse(batch)
            self.check(records)
            self.add(digest, records)
            if self.kind != KIND_SNAPSHOT:
                keys.extend(self.keys(records))
        return keys

    def _snapshot_fast(self, batch: RawBatch, digest: LtHash) -> bool:
        """Check and hash a batch of the common shape without building records (most of a
        snapshot); False sends it down the general path, which also names any bad row."""
        columns = simple_columns(batch, self.width)
        if columns is None or not all(map("U".__eq__, columns[0])):
            return False
        values = columns[1:]
        if any(v.check(c) is not None for v, c in zip(self.validators, values, strict=True)):
            return False
        # no quote inside any value, and key columns are NOT NULL (just checked): a key's
        # canonical encoding is its values quoted
        key_columns = cast("list[tuple[str, ...]]", [values[i] for i in self.key_positions])
        if len(key_columns) == 1:
            keys = ['"' + k + '"' for k in key_columns[0]]
        else:
            keys = ['"' + '","'.join(k) + '"' for k in zip(*key_columns, strict=True)]
        digest.add([k.encode("utf-8") for k in keys], [r[2:].encode("utf-8") for r in batch.records])
        return True


def record_keys(records: list[Record], key_positions: Sequence[int]) -> list[bytes]:
    """Each record's key in canonical encoding (what picks its digest bucket)."""
    if len(key_positions) == 1:
        k = key_positions[0]
        return [('"' + r.values[k].replace('"', '""') + '"').encode("utf-8") for r in records]  # type: ignore[union-attr]
    return [encode_values([r.values[i] for i in key_positions]).encode("utf-8") for r in records]


def add_upserts(digest: LtHash, records: list[Record], key_positions: Sequence[int]) -> None:
    """Add the upserted rows to ``digest`` (row item: the record's canonical text)."""
    upserts = [r for r in records if r.op == "U"]
    digest.add(record_keys(upserts, key_positions), [r.raw.encode("utf-8") for r in upserts])


class KeyRegister:
    """A delta names each key once: twice would make the result depend on the order."""

    def __init__(self, kind: str) -> None:
        self.seen: set[bytes] | None = None if kind == KIND_SNAPSHOT else set()

    def add(self, keys: list[bytes]) -> None:
        seen = self.seen
        if seen is None:
            return
        distinct = set(keys)
        if len(distinct) != len(keys) or not seen.isdisjoint(distinct):
            earlier: set[bytes] = set()
            for key in keys:
                if key in seen or key in earlier:
                    raise PayloadMalformed(f"key {key.decode('utf-8', 'replace')} appears twice in the delta")
                earlier.add(key)
        seen.update(distinct)


# ---------------------------------------------------------------- worker side

TaskResult = tuple[LtHash, list[bytes]]
"""A task's partial digest (pickled back from a worker process, as is from a thread) and keys."""

_checkers = threading.local()
"""Per thread (validators remember valid values, so threads must not share them)."""


def _check_task(
    schema_key: str, schema: list[dict[str, Any]], kind: str, batches: list[RawBatch]
) -> TaskResult:
    """Worker entry point: a task's partial digest and delta keys, or the rejection."""
    if getattr(_checkers, "key", None) != (schema_key, kind):
        # one schema at a time is the common case; keep memory flat
        _checkers.key, _checkers.checker = (schema_key, kind), RowChecker(columns_from_schema(schema), kind)
    checker: RowChecker = _checkers.checker
    digest = LtHash()
    keys = checker.check_and_hash(batches, digest)
    return digest, keys


def hash_stored_rows(columns: Sequence[ColumnSpec], rows: Sequence[Sequence[Any]], digest: LtHash) -> None:
    """Add rows read back from the database (driver values) to ``digest``, canonicalised."""
    convert = [canonicalizer(c) for c in columns]
    key_positions = key_indexes(columns)
    keys: list[bytes] = []
    items: list[bytes] = []
    for row in rows:
        key, item = row_item([f(v) for f, v in zip(convert, row, strict=True)], key_positions)
        keys.append(key)
        items.append(item)
    digest.add(keys, items)


def _hash_rows_task(
    schema_key: str, schema: list[dict[str, Any]], kind: str, rows: list[Sequence[Any]]
) -> TaskResult:
    """Worker entry point: the partial digest of rows read back from the database."""
    digest = LtHash()
    hash_stored_rows(columns_from_schema(schema), rows, digest)
    return digest, []


def hash_stored_text(
    columns: Sequence[ColumnSpec], fast: FastRows | None, batch: RawBatch, digest: LtHash
) -> None:
    """Add rows the database rendered as canonical text (no op) to ``digest``: in C when every
    value is canonical for its column; otherwise (a value written behind the agent's back,
    say ``1.50`` in an unconstrained NUMBER) each value is read back into the driver's type
    and canonicalised, exactly as :func:`hash_stored_rows` would."""
    if fast is not None and fast.hash_stored(batch.records, digest):
        return
    framed = RawBatch(["U," + r for r in batch.records], batch.numbers, batch.first_line)
    try:
        records = parse_raw_batch(framed, len(columns))
    except RecordFormatError as exc:
        raise TableStoreError(f"rows read back from the database are not canonical CSV: {exc}") from exc
    hash_stored_rows(
        columns,
        [[to_python(v, c.type) for v, c in zip(r.values, columns, strict=True)] for r in records],
        digest,
    )


_text_hashers = threading.local()
"""Per thread: the columns and C plan of the schema last hashed (read-back tasks)."""


def _hash_text_task(
    schema_key: str, schema: list[dict[str, Any]], kind: str, batches: list[RawBatch]
) -> TaskResult:
    """Thread entry point: the partial digest of rows read back as canonical text."""
    if getattr(_text_hashers, "key", None) != schema_key:  # the column plan, once per thread
        columns = columns_from_schema(schema)
        _text_hashers.key, _text_hashers.plan = schema_key, (columns, FastRows.for_columns(columns))
    columns, fast = _text_hashers.plan
    digest = LtHash()
    for batch in batches:
        hash_stored_text(columns, fast, batch, digest)
    return digest, []


# ---------------------------------------------------------------- the pool

_pool: ProcessPoolExecutor | None = None
_threads: ThreadPoolExecutor | None = None
_pool_off: str | None = None
"""Why worker processes are not used in this process any more (None while they are)."""
_pool_lock = threading.Lock()


def worker_count() -> int:
    """Worker processes: one per usable core (``EDU_SYNC_CHECK_WORKERS`` overrides; 0 = none)."""
    configured = os.environ.get("EDU_SYNC_CHECK_WORKERS")
    if configured is not None:
        return max(0, int(configured))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _exit_with_parent(parent: int) -> None:
    """Worker initialiser: leave as soon as the applying process is gone (even SIGKILLed),
    instead of lingering as an orphan that a restarted agent would never reuse."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _shared_pool(workers: int) -> ProcessPoolExecutor | None:
    global _pool
    with _pool_lock:
        if _pool is None and _pool_off is None:
            # spawn, not fork: the daemon has threads (watchers, transports) a fork would copy mid-lock
            _pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            atexit.register(shutdown_pool)
        return _pool


def _shared_threads(workers: int) -> ThreadPoolExecutor:
    """Threads for checks that run in C with the GIL released (protocol/fastrows.py): they
    use every core without the cost of sending rows to another process."""
    global _threads
    with _pool_lock:
        if _threads is None:
            _threads = ThreadPoolExecutor(workers, thread_name_prefix="row-check")
        return _threads


def _forget_threads() -> None:
    """After fork the child has none of the parent's threads: start its own when needed."""
    global _threads
    _threads = None


os.register_at_fork(after_in_child=_forget_threads)


def _submit(pool: ProcessPoolExecutor, fn: Any, *args: Any) -> Future[Any]:
    """``pool.submit``, which may spawn a worker: spawned processes re-import the parent's
    ``__main__`` (for the daemon: the whole CLI, configuration, transports), which the row
    checks never use, so a bare main stands in while the call runs (~25 MB less per worker)."""
    with _pool_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            return pool.submit(fn, *args)
        finally:
            if main is not None:
                sys.modules["__main__"] = main


def _ready() -> None:
    """A no-op task: submitting one per worker starts them (imports take a second)."""


def _warm_up_pool(workers: int) -> None:
    pool = _shared_pool(workers)
    if pool is None:
        return
    try:
        for _ in range(workers):
            _submit(pool, _ready)
    except (BrokenProcessPool, RuntimeError, OSError) as exc:
        _turn_pool_off(exc)


def _turn_pool_off(reason: BaseException) -> None:
    """A worker could not start or died: check rows in this process from now on (and say so)."""
    global _pool_off
    with _pool_lock:
        first = _pool_off is None
        _pool_off = f"{type(reason).__name__}: {reason}".strip()
    if first:
        log.warning("row checks continue in the applying process only; workers failed: %s", _pool_off)
    shutdown_pool(wait=False)


def worker_pids() -> list[int]:
    """Process ids of the running row-check workers (for memory accounting)."""
    with _pool_lock:
        processes = getattr(_pool, "_processes", None) or {}
        return [pid for pid in processes]


def shutdown_pool(wait: bool = True) -> None:
    global _pool, _threads
    with _pool_lock:
        pool, _pool = _pool, None
        threads, _threads = _threads, None
    for executor in (pool, threads):
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)


class _Tasks:
    """Work cut into tasks of :data:`TASK_ROWS` rows: the first checked here, the rest in the
    worker pool (a bounded number in flight), partial digests summed in submission order.
    If the pool breaks, its tasks run here instead: slower, never skipped."""

    worker_entry: Any  # the module-level function a worker runs on one task
    in_threads = False  # True: the tasks run in C without the GIL, so threads are enough

    def __init__(self, schema: list[dict[str, Any]], kind: str, workers: int | None) -> None:
        self.schema = schema
        self.schema_key = json.dumps(schema, sort_keys=True, ensure_ascii=False)
        self.kind = kind
        self.workers = worker_count() if workers is None else workers
        self.digest = LtHash()
        self.rows_seen = 0
        self._task: list[Any] = []
        self._task_rows = 0
        self._inflight: deque[tuple[Future[TaskResult], list[Any]]] = deque()

    def _add(self, item: Any, rows: int) -> None:
        self._task.append(item)
        self._task_rows += rows
        if self._task_rows >= TASK_ROWS:
            if self.rows_seen == 0 and self.workers and not self.in_threads:
                _warm_up_pool(self.workers)  # more is coming: start workers while this task runs here
            self._dispatch()

    def finish(self) -> LtHash:
        if self._task:
            self._dispatch()
        while self._inflight:
            self._collect()
        return self.digest

    def close(self) -> None:
        """Drop queued work (after an error); tasks already running finish in the worker."""
        for future, _task in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._task = []

    def _dispatch(self) -> None:
        task, self._task, rows, self._task_rows = self._task, [], self._task_rows, 0
        first = self.rows_seen == 0
        self.rows_seen += rows
        if self.workers == 0 or first:
            # the first task always runs here, so a small package never needs a worker
            self._run_here(task)
            return
        entry: Callable[..., TaskResult] = type(self).worker_entry
        args = (self.schema_key, self.schema, self.kind, task)
        if self.in_threads:
            while len(self._inflight) >= 2 * self.workers:
                self._collect()
            self._inflight.append((_shared_threads(self.workers).submit(entry, *args), task))
            return
        pool = _shared_pool(self.workers)
        if pool is None:
            self._run_here(task)
            return
        while len(self._inflight) >= 2 * self.workers:
            self._collect()
        try:
            future = _submit(pool, entry, *args)
        except (BrokenProcessPool, RuntimeError, OSError) as exc:
            _turn_pool_off(exc)
            self._run_here(task)
            return
        self._inflight.append((future, task))

    def _collect(self) -> None:
        future, task = self._inflight.popleft()
        try:
            partial, keys = future.result()
        except (BrokenProcessPool, OSError) as exc:
            _turn_pool_off(exc)
            self._run_here(task)
            return
        self.digest.lanes += partial.lanes
        self.digest.counts += partial.counts
        self._collected(keys)

    def _run_here(self, task: list[Any]) -> None:
        raise NotImplementedError

    def _collected(self, keys: list[bytes]) -> None:
        """Hook: what a worker returned besides the digest."""


class RowPipeline(_Tasks):
    """Checks a payload's framed batches, in worker processes once it is large.

    ``submit`` every batch in payload order, then ``finish()`` for the digest of all upserted
    rows (it raises the first rejection, in payload order). ``close()`` after an error.
    """

    worker_entry = _check_task

    def __init__(
        self,
        columns: Sequence[ColumnSpec],
        schema: list[dict[str, Any]],
        kind: str,
        *,
        workers: int | None = None,
    ) -> None:
        super().__init__(schema, kind, workers)
        self.local = RowChecker(columns, kind)
        self.in_threads = self.local.fast is not None
        self._keys = KeyRegister(kind)

    def submit(self, batch: RawBatch) -> None:
        self._add(batch, len(batch.records))

    @contextlib.contextmanager
    def precise_errors(self) -> Iterator[None]:
        """Where loading failed (a database error, a bad value reaching a driver), the checks
        usually name the bad row and column: raise their rejection instead, if there is one."""
        try:
            yield
        except TableStoreError:
            raise
        except Exception as exc:
            try:
                self.finish()
            except PackageRejected as rejection:
                raise rejection from exc
            raise

    def _run_here(self, task: list[Any]) -> None:
        self._keys.add(self.local.check_and_hash(task, self.digest))

    def _collected(self, keys: list[bytes]) -> None:
        self._keys.add(keys)


class StoredRowsDigest(_Tasks):
    """The digest of rows read back from the database (a delta's old rows, a whole table for
    ``verify``): canonicalising driver values costs as much as hashing, so both go to workers.
    Rows the database rendered as canonical text go to a :class:`_StoredTextDigest`."""

    worker_entry = _hash_rows_task

    def __init__(
        self, columns: Sequence[ColumnSpec], schema: list[dict[str, Any]], *, workers: int | None = None
    ) -> None:
        super().__init__(schema, "stored", workers)
        self.columns = list(columns)
        self._text: _StoredTextDigest | None = None

    def feed(self, rows: StoredRows) -> None:
        if isinstance(rows, CanonicalText):
            if self._text is None:
                self._text = _StoredTextDigest(self.columns, self.schema, self.workers)
            for batch in rows.batches:
                self._text.submit(RawBatch(batch, None, 1))
            return
        for row in rows:
            self._add(tuple(row), 1)

    def finish(self) -> LtHash:
        digest = super().finish()
        return digest if self._text is None else digest.combine(self._text.finish())

    def close(self) -> None:
        super().close()
        if self._text is not None:
            self._text.close()

    def _run_here(self, task: list[Any]) -> None:
        hash_stored_rows(self.columns, task, self.digest)


class _StoredTextDigest(_Tasks):
    """Canonical text read back from the database, hashed in C in threads."""

    worker_entry = _hash_text_task
    in_threads = True

    def __init__(self, columns: Sequence[ColumnSpec], schema: list[dict[str, Any]], workers: int) -> None:
        super().__init__(schema, "stored", workers)
        self.columns = list(columns)
        self.fast = FastRows.for_columns(columns)

    def submit(self, batch: RawBatch) -> None:
        self._add(batch, len(batch.records))

    def _run_here(self, task: list[Any]) -> None:
        for batch in task:
            hash_stored_text(self.columns, self.fast, batch, self.digest)


__all__ = [
    "TASK_ROWS",
    "KeyRegister",
    "RowChecker",
    "RowPipeline",
    "StoredRowsDigest",
    "add_upserts",
    "record_keys",
    "shutdown_pool",
    "worker_count",
    "worker_pids",
]
