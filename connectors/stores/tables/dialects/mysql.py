"""MySQL/MariaDB: ``LOAD DATA LOCAL INFILE`` through a FIFO, and ``RENAME TABLE`` swaps.

DDL commits implicitly here, so a snapshot cannot swap inside the transaction that moves
the position: the store records a swap intent first and :meth:`TableStore.recover`
finishes or undoes an interrupted swap (see store.py). Tables use ``utf8mb4`` with a
binary collation so that keys compare exactly as the canonical text does.

Fast path (PyMySQL, server ``local_infile=ON``): the rows are streamed to one ``LOAD DATA
LOCAL INFILE`` statement through a FIFO in a private temporary directory, so no plaintext
row ever reaches the disk. The statement runs in a helper thread (PyMySQL opens the FIFO
when the server asks for the "file"); the caller's thread writes the encoded rows into it.
``LOCAL`` turns errors into warnings and duplicate keys into skipped rows, so every load
is checked afterwards: any warning, or an affected-row count different from the rows sent,
refuses the package. Snapshots load the staging table this way; deltas load a temporary
table, then run one ``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`` and one ``DELETE``
join. Where ``LOCAL`` is unavailable (server OFF, other driver, an engine made without
``local_infile``) the dialect falls back to multi-row ``INSERT`` statements and says so
once in the log.
"""

# ruff: noqa: S608 - SQL text holds only identifiers quoted by the dialect's preparer; values are bound

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from connectors.stores.tables.dialects.base import (
    Batch,
    Binder,
    DeltaApplier,
    ExecutemanyLoader,
    SnapshotLoader,
    SqlDialect,
    chunks,
    strip_utc,
)
from connectors.stores.tables.errors import TableEnvironmentError
from protocol.canonical import ColumnSpec, ColumnType, Family

log = logging.getLogger(__name__)

_KEY_CHUNK = 1000
_DELTA_TABLE = "edu_sync_delta"
_OP_COLUMN = "edu_sync_op"  # the reserved prefix: no schema column can be named so
_PIPE_SIZE = 1 << 20  # fewer wake-ups of the driver's reading thread (Linux F_SETPIPE_SZ)
_NET_READ_TIMEOUT = 600  # seconds the server waits for the next rows while the agent validates
_fallbacks_logged: set[str] = set()
_ABORT_GRACE = 30.0  # seconds abort() waits for the statement before cutting the connection
_MAX_VARCHAR = 1000  # utf8mb4: 4 bytes a character against the 65,535-byte row limit

_INT_TYPES: list[tuple[int, int, Any]] = [
    (-(2**7), 2**7 - 1, mysql.TINYINT),
    (-(2**15), 2**15 - 1, mysql.SMALLINT),
    (-(2**23), 2**23 - 1, mysql.MEDIUMINT),
    (-(2**31), 2**31 - 1, mysql.INTEGER),
    (-(2**63), 2**63 - 1, mysql.BIGINT),
]


class MySQLDialect(SqlDialect):
    name = "mysql"
    transactional_ddl = False

    def table_options(self) -> dict[str, Any]:
        return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

    def column_type(self, ctype: ColumnType) -> sa.types.TypeEngine[Any]:
        family = ctype.family
        if family is Family.TEXT:
            if ctype.length is None or ctype.length > _MAX_VARCHAR:
                return mysql.LONGTEXT()
            if ctype.fixed and ctype.length <= 255:
                return mysql.CHAR(ctype.length)
            return mysql.VARCHAR(ctype.length)
        if family is Family.INTEGER:
            for low, high, kind in _INT_TYPES:
                if low <= ctype.int_min and ctype.int_max <= high:
                    return kind()
                if ctype.int_min == 0 and ctype.int_max <= 2 * high + 1:
                    return kind(unsigned=True)
        if family is Family.DECIMAL:
            if ctype.precision is None:
                return mysql.DECIMAL(65, 30)
            return mysql.DECIMAL(ctype.precision, ctype.scale)
        if family is Family.FLOAT:
            return mysql.DOUBLE()
        if family is Family.DATE:
            return mysql.DATE()
        if family in (Family.TIMESTAMP, Family.TIMESTAMPTZ):
            return mysql.DATETIME(fsp=ctype.fraction)
        if family is Family.BINARY:
            if ctype.length is not None and ctype.length <= 4000:
                return mysql.VARBINARY(ctype.length)
            return mysql.LONGBLOB()
        return mysql.TINYINT(1)

    def binder(self, ctype: ColumnType) -> Binder | None:
        if ctype.family is Family.TIMESTAMPTZ:
            return strip_utc  # DATETIME holds the UTC wall time
        return super().binder(ctype)

    def engine_options(self) -> dict[str, Any]:
        """PyMySQL connections announce ``LOCAL`` capability (the server refuses it otherwise);
        :meth:`on_connect` then disarms it until one of the dialect's own loads runs."""
        if self.sa_dialect.driver == "pymysql":
            return {"connect_args": {"local_infile": True}}
        return {}

    def on_connect(self, dbapi_connection: Any) -> None:
        if _is_pymysql(dbapi_connection):
            # the server may ask for a file only while our own LOAD DATA runs (_LocalInfile)
            dbapi_connection._local_infile = False
        with dbapi_connection.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute(
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES')"
            )

    def snapshot_loader(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> SnapshotLoader:
        if self.local_infile(conn):
            return _LocalInfileLoader(self, conn, table, columns)
        return ExecutemanyLoader(self, conn, table, columns)

    def delta_applier(self, conn: Connection, table: str, columns: Sequence[ColumnSpec]) -> DeltaApplier:
        if self.local_infile(conn):
            return _LocalInfileDelta(self, conn, table, columns)
        return _Delta(self, conn, table, columns)

    # -- LOAD DATA LOCAL INFILE -----------------------------------------------------------
    def local_infile(self, conn: Connection) -> bool:
        """True when both ends allow ``LOAD DATA LOCAL``; logs each reason to fall back once."""
        driver = conn.connection.driver_connection
        opted = str(conn.engine.url.query.get("local_infile", "")).strip().lower()
        if opted in ("0", "false", "no", "off"):
            reason = "the database URL sets local_infile=0"
        elif not _is_pymysql(driver):
            reason = f"the driver is {self.sa_dialect.driver}, not PyMySQL"
        elif not getattr(driver, "client_flag", 0) & _LOCAL_FILES:
            reason = "the connection was made without local_infile"
        else:
            server = conn.exec_driver_sql("SELECT @@GLOBAL.local_infile", ()).scalar()
            if str(server).upper() in ("1", "ON"):
                return True
            reason = "local_infile is OFF on the server"
        if reason not in _fallbacks_logged:  # once per process: a daemon opens many stores
            _fallbacks_logged.add(reason)
            log.info("MySQL/MariaDB: %s; loading with multi-row INSERT statements instead", reason)
        return False

    def load_data_sql(
        self, path: str, table: str, columns: Sequence[ColumnSpec], op_column: str | None = None
    ) -> str:
        """``LOAD DATA LOCAL INFILE`` of canonical ``op,values`` lines (:func:`encode_lines`).

        Values are read exactly: fields enclosed in ``"`` (a doubled ``"`` is one quote),
        no escape character (a backslash is data), the unquoted word ``NULL`` is NULL and
        ``"NULL"`` the string. Columns whose canonical text the server does not read as is
        (hex binary, booleans, zoned timestamps) go through user variables and ``SET``.
        """
        q = self.quote
        targets = [q(op_column) if op_column else "@op"]  # a snapshot's op is read and dropped
        assignments = []
        for i, column in enumerate(columns):
            expression = _load_expression(column.type, f"@v{i}")
            if expression is None:
                targets.append(q(column.name))
            else:
                targets.append(f"@v{i}")
                assignments.append(f"{q(column.name)} = {expression}")
        # executed with a parameter sequence (see quote()): % is doubled like in identifiers
        literal = "'" + path.replace("'", "''").replace("%", "%%") + "'"
        sql = (
            f"LOAD DATA LOCAL INFILE {literal} INTO TABLE {q(table)} CHARACTER SET utf8mb4 "
            "FIELDS TERMINATED BY ',' ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\n' "
            f"({', '.join(targets)})"
        )
        if assignments:
            sql += " SET " + ", ".join(assignments)
        return sql

    def rename_swap(self, conn: Connection, live: str, staging: str, old: str, live_exists: bool) -> None:
        """One atomic ``RENAME TABLE`` (implicit commit): staging becomes live, live becomes old."""
        q = self.quote
        if live_exists:
            conn.exec_driver_sql(f"RENAME TABLE {q(live)} TO {q(old)}, {q(staging)} TO {q(live)}", ())
        else:
            conn.exec_driver_sql(f"RENAME TABLE {q(staging)} TO {q(live)}", ())


class _Delta(DeltaApplier):
    def __init__(
        self, dialect: MySQLDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect, self.table, self.columns = dialect, table, columns
        self.cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self.binders = [dialect.binder(c.type) for c in columns]
        self.key_positions = [i for i, c in enumerate(columns) if c.primary_key]
        self.keys = [columns[i] for i in self.key_positions]
        q = dialect.quote
        updates = ", ".join(f"{q(c.name)} = VALUES({q(c.name)})" for c in columns if not c.primary_key)
        first_key = q(self.keys[0].name)
        self.upsert_sql = (
            f"INSERT INTO {q(table)} ({dialect.column_list(columns)}) "
            f"VALUES ({dialect.placeholders(len(columns))}) "
            f"ON DUPLICATE KEY UPDATE {updates or f'{first_key} = {first_key}'}"
        )

    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]:
        d = self.dialect
        rows = d.bound_rows(batch, self.binders)
        keys = [[row[i] for i in self.key_positions] for row in rows]
        old: list[Sequence[Any]] = []
        for part in chunks(keys, _KEY_CHUNK):
            self.cursor.execute(
                d.keys_select(self.table, self.columns, self.keys, len(part)), [v for k in part for v in k]
            )
            old.extend(self.cursor.fetchall())
        ops = batch.ops()
        upserts = [row for row, op in zip(rows, ops, strict=True) if op == "U"]
        if upserts:
            self.cursor.executemany(self.upsert_sql, upserts)
            self.upserted += len(upserts)
        deletes = [key for key, op in zip(keys, ops, strict=True) if op == "D"]
        for part in chunks(deletes, _KEY_CHUNK):
            condition = d.keys_condition(self.keys, len(part))
            self.deleted += self.cursor.execute(
                f"DELETE FROM {d.quote(self.table)} WHERE {condition}", [v for k in part for v in k]
            )
        return old


# -- LOAD DATA LOCAL INFILE ---------------------------------------------------------------
_LOCAL_FILES = 128  # pymysql.constants.CLIENT.LOCAL_FILES
_FIFO_PREFIX = "edu-sync-load-"  # + pid + "-": a private (0700) directory holding one FIFO


def _is_pymysql(dbapi_connection: Any) -> bool:
    return type(dbapi_connection).__module__.startswith("pymysql")


def _remove_orphans() -> None:
    """Remove FIFO directories of killed processes (a FIFO holds no data, only an inode)."""
    for name in os.listdir(tempfile.gettempdir()):
        if not name.startswith(_FIFO_PREFIX):
            continue
        pid = name[len(_FIFO_PREFIX) :].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tempfile.gettempdir(), name), ignore_errors=True)
        except (ValueError, OSError):
            continue  # not ours, or the process lives (or belongs to someone else)


def _load_expression(ctype: ColumnType, var: str) -> str | None:
    """SQL turning the canonical text in ``var`` into the column's value (mirrors ``binder``)."""
    if ctype.family is Family.BINARY:
        return f"UNHEX(SUBSTRING({var}, 3))"  # \\x00ff -> bytes
    if ctype.family is Family.BOOLEAN:
        return f"CASE {var} WHEN 'true' THEN 1 WHEN 'false' THEN 0 END"
    if ctype.family is Family.TIMESTAMPTZ:
        return f"LEFT({var}, CHAR_LENGTH({var}) - 6)"  # DATETIME holds the UTC wall time
    return None


def _null_words(line: str) -> str:
    """Write each NULL (an empty unquoted field) of a canonical ``op,values`` line as ``NULL``.

    Outside the quotes a canonical line holds only the op and commas, so after splitting on
    ``"`` the even-numbered parts are what lies between quoted values (a doubled ``""``
    inside a value only adds an empty even part): there, ``,,`` encloses a NULL field, and
    a line ending with ``,`` ends with one.
    """
    parts = line.split('"')
    parts[0::2] = [p.replace(",,", ",NULL,").replace(",,", ",NULL,") if ",," in p else p for p in parts[0::2]]
    if parts[-1].endswith(","):
        parts[-1] += "NULL"
    return '"'.join(parts)


def encode_lines(lines: Sequence[str]) -> bytes:
    """Canonical ``op,values`` lines as ``LOAD DATA`` input (see :meth:`MySQLDialect.load_data_sql`).

    A line without NULL is sent as it is; NULL, an empty unquoted field in the canonical
    form (which ``LOAD DATA`` would read as ``''`` or 0), becomes the unquoted word ``NULL``.
    """
    text = "\n".join([t if ",," not in t and t[-1:] != "," else _null_words(t) for t in lines])
    return (text + "\n").encode("utf-8")


class _LocalInfile:
    """One ``LOAD DATA LOCAL INFILE`` statement fed from the caller's thread through a FIFO.

    The FIFO lives in a private (0700) temporary directory and is removed afterwards; the
    rows never touch the disk. A helper thread executes the statement: PyMySQL opens the
    FIFO when the server asks for the file and sends what it reads. The caller's thread
    opens its end only once PyMySQL has opened the reading end (a non-blocking open that
    fails with ENXIO until then), checking meanwhile whether the statement already ended
    (LOCAL refused, table missing, connection lost): no open() can block forever. Once both
    ends are open, writes block only while the server is busy; if the statement fails,
    PyMySQL closes its end and the next write fails with EPIPE.
    """

    def __init__(self, dbapi_connection: Any, statement: Callable[[str], str]) -> None:
        self.driver = dbapi_connection
        _remove_orphans()
        self.directory = tempfile.mkdtemp(prefix=f"{_FIFO_PREFIX}{os.getpid()}-")
        self.path = os.path.join(self.directory, "rows")
        self.fd: int | None = None
        self.rows = 0
        self.affected: int | None = None
        self.warnings: list[Sequence[Any]] = []
        self.error: BaseException | None = None
        try:
            os.mkfifo(self.path, 0o600)
            self.sql = statement(self.path)
            self.thread = threading.Thread(target=self._execute, name="edu-sync-load-data", daemon=True)
            self.thread.start()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    # -- helper thread ------------------------------------------------------------------
    def _execute(self) -> None:
        try:
            with self.driver.cursor() as cur:
                cur.execute("SELECT @@SESSION.net_read_timeout")
                saved = cur.fetchone()[0]
                cur.execute("SET SESSION net_read_timeout = GREATEST(%s, %s)", (saved, _NET_READ_TIMEOUT))
                self.driver._local_infile = True
                try:
                    self.affected = cur.execute(self.sql, ())
                finally:
                    self.driver._local_infile = False
                if cur.warning_count:
                    cur.execute("SHOW WARNINGS")
                    self.warnings = list(cur.fetchall()) or [("Warning", "?", "(warnings not listed)")]
                cur.execute("SET SESSION net_read_timeout = %s", (saved,))
        except BaseException as exc:  # re-raised in the caller's thread by finish()
            self.error = exc

    # -- caller's thread ------------------------------------------------------------------
    def write(self, data: bytes, rows: int) -> None:
        """Send ``rows`` encoded rows (blocks while the server is busy)."""
        if self.fd is None:
            self.fd = self._open_writer()
            if self.fd is None:
                self._raise_failure("the database ended the load before reading any row")
        fd, view = self.fd, memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except BrokenPipeError:
            self._raise_failure("the database stopped reading the rows")
        self.rows += rows

    def finish(self) -> None:
        """End the stream, wait for the statement, refuse any warning or missing row."""
        if self.fd is None:
            self.fd = self._open_writer()  # an empty load: the server still asks for the file
        self._close_writer()
        self.thread.join()
        self._remove_fifo()
        if self.error is not None:
            raise self.error
        # LOCAL makes the server skip a refused row with a warning instead of failing: refuse
        # the load like the INSERT path would (the store names the bad row if its checks can)
        if self.warnings:
            level, code, message = self.warnings[0][:3]
            more = f" (and {len(self.warnings) - 1} more)" if len(self.warnings) > 1 else ""
            raise self.driver.IntegrityError(code, f"LOAD DATA {level}: {message}{more}")
        if self.affected != self.rows:
            raise self.driver.IntegrityError(
                0, f"LOAD DATA stored {self.affected} of the {self.rows} rows sent"
            )

    def abort(self) -> None:
        """End the statement without hanging; what it loaded is rolled back by the caller."""
        deadline = time.monotonic() + _ABORT_GRACE
        if self.fd is None:
            # PyMySQL may be blocked opening its end (which waits for a writer): give it one
            # that closes at once, so that it reads an empty rest and the statement ends
            with contextlib.suppress(OSError):
                self.fd = self._open_writer(deadline)
        self._close_writer()
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            log.warning("LOAD DATA did not end %ss after abort; closing its connection", _ABORT_GRACE)
            sock: Any = getattr(self.driver, "_sock", None)
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)
            self.thread.join(5.0)
        self._remove_fifo()

    def _open_writer(self, deadline: float | None = None) -> int | None:
        """Our end of the FIFO once the driver has opened its end; None if the statement ended."""
        delay = 0.001
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody has the FIFO open for reading yet
                    raise
                if not self.thread.is_alive() or (deadline is not None and time.monotonic() > deadline):
                    return None
                self.thread.join(delay)
                delay = min(delay * 2, 0.05)
                continue
            os.set_blocking(fd, True)
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)  # Linux only
            return fd

    def _close_writer(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def _remove_fifo(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _raise_failure(self, what: str) -> NoReturn:
        self._close_writer()
        self.thread.join()
        self._remove_fifo()
        if self.error is not None:
            raise self.error
        raise TableEnvironmentError(f"LOAD DATA LOCAL INFILE: {what}")


class _LocalInfileLoader(SnapshotLoader):
    """Snapshot rows into the staging table through one ``LOAD DATA LOCAL INFILE``."""

    def __init__(
        self, dialect: MySQLDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.stream = _LocalInfile(
            conn.connection.driver_connection,
            lambda path: dialect.load_data_sql(path, table, columns, op_column=None),
        )

    def load(self, batch: Batch) -> None:
        lines = batch.lines()
        self.stream.write(encode_lines(lines), len(lines))

    def close(self) -> None:
        self.stream.finish()

    def abort(self, exc: BaseException) -> None:
        self.stream.abort()


class _LocalInfileDelta(DeltaApplier):
    """Delta records (op included) into a temporary table, then two set statements.

    ``finish`` streams the live rows of every key in the delta (the digest subtracts
    them), then one ``INSERT ... SELECT ... ON DUPLICATE KEY UPDATE`` of the upserts and
    one ``DELETE`` join of the deletes, all in the caller's transaction.
    """

    def __init__(
        self, dialect: MySQLDialect, conn: Connection, table: str, columns: Sequence[ColumnSpec]
    ) -> None:
        self.dialect, self.conn, self.table, self.columns = dialect, conn, table, columns
        self.keys = [c for c in columns if c.primary_key]
        staged = sa.Table(
            _DELTA_TABLE,
            sa.MetaData(),
            sa.Column(_OP_COLUMN, sa.types.CHAR(1), nullable=False),
            *(
                sa.Column(
                    c.name,
                    dialect.column_type(c.type),
                    primary_key=c.primary_key,
                    nullable=not c.primary_key,  # a delete record carries only the key
                    autoincrement=False,
                )
                for c in columns
            ),
            prefixes=["TEMPORARY"],
            **dialect.table_options(),
        )
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {dialect.quote(_DELTA_TABLE)}", ())
        conn.exec_driver_sql(str(sa.schema.CreateTable(staged).compile(dialect=dialect.sa_dialect)), ())
        self.stream = _LocalInfile(
            conn.connection.driver_connection,
            lambda path: dialect.load_data_sql(path, _DELTA_TABLE, columns, op_column=_OP_COLUMN),
        )

    def stage(self, batch: Batch) -> Iterable[Sequence[Any]]:
        lines = batch.lines()
        self.stream.write(encode_lines(lines), len(lines))
        self.upserted += sum(1 for line in lines if line[0] == "U")
        return ()

    def abort(self, exc: BaseException) -> None:
        self.stream.abort()

    def finish(self) -> Iterator[Sequence[Any]]:
        self.stream.finish()
        d, q, conn = self.dialect, self.dialect.quote, self.conn
        live, staged, op = q(self.table), q(_DELTA_TABLE), q(_OP_COLUMN)
        match = d.key_match(self.keys, "t", "s")
        yield from conn.exec_driver_sql(
            f"SELECT {d.column_list(self.columns, 't.')} FROM {live} t JOIN {staged} s ON {match}",
            (),
            execution_options={"stream_results": True, "yield_per": 5000},
        )
        names = d.column_list(self.columns)
        first_key = q(self.keys[0].name)
        updates = ", ".join(f"{q(c.name)} = VALUES({q(c.name)})" for c in self.columns if not c.primary_key)
        conn.exec_driver_sql(
            f"INSERT INTO {live} ({names}) SELECT {names} FROM {staged} WHERE {op} = 'U' "
            f"ON DUPLICATE KEY UPDATE {updates or f'{first_key} = {first_key}'}",
            (),
        )
        result = conn.exec_driver_sql(
            f"DELETE t FROM {live} t JOIN {staged} s ON {match} WHERE s.{op} = 'D'", ()
        )
        self.deleted = result.rowcount
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE {staged}", ())
