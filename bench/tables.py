"""Table store benchmarks, each next to a baseline measured in the same run (issue 5).

    nice .venv/bin/python bench/tables.py [--rows N] [--delta-rows D] [--big-rows M]

* pg_snapshot: N staff rows (Chinese text, dates, decimals) into PostgreSQL end to end from
  an encrypted package (open_package -> TableStore.apply) vs ``psql \\copy`` of the same
  plaintext CSV into an identical empty table.
* pg_delta_N / pg_delta_M: a D-row delta (updates over the whole key range, inserts,
  deletes) into N- and M-row tables vs the same delta by hand in psql (COPY into a
  temporary table, INSERT ... ON CONFLICT DO UPDATE, DELETE ... USING) on a copy.
* sqlite_snapshot: N rows via the store vs a bare ``executemany`` of the same rows.
* mariadb_snapshot: N rows via the store vs a bare PyMySQL ``executemany`` (target 100k rows/s).
* pg_verify: full verify of the N-row table vs fetching the same rows through the driver.
* peak RSS of the M-row snapshot (child process; target <= 200 MB).

Ends with ONE JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa

from connectors.stores.tables import TableStore
from connectors.stores.tables.dialects import dialect_for
from connectors.stores.tables.schema import build_table, ddl_statements
from protocol.canonical import columns_from_schema, encode_values, key_indexes, to_python
from protocol.digest import LtHash, row_item
from protocol.keys import init_keys
from protocol.package import PackageWriter, open_package

PG = os.environ.get("EDU_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("EDU_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

SCHEMA: list[dict[str, Any]] = [
    {"name": "GH", "type": "VARCHAR2(20)", "primary_key": True, "label": "工号", "meaning": "教职工工号"},
    {"name": "XM", "type": "NVARCHAR2(50)", "not_null": True, "label": "姓名", "meaning": "姓名"},
    {"name": "XB", "type": "CHAR(1)", "label": "性别", "meaning": "性别"},
    {"name": "CSRQ", "type": "DATE", "format": "YYYY-MM-DD", "label": "出生日期", "meaning": "出生日期"},
    {"name": "BM", "type": "NVARCHAR2(60)", "label": "部门", "meaning": "所在部门"},
    {"name": "ZC", "type": "NVARCHAR2(30)", "label": "职称", "meaning": "专业技术职务"},
    {"name": "GZ", "type": "NUMBER(10,2)", "label": "基本工资", "meaning": "月基本工资"},
    {"name": "RZSJ", "type": "TIMESTAMP", "label": "入职时间", "meaning": "入职时间"},
    {
        "name": "UPDATETIME",
        "type": "VARCHAR2(50)",
        "not_null": True,
        "format": "YYYY-MM-DD HH:MM:SS",
        "label": "更新时间",
        "meaning": "更新时间",
    },
]
COLUMNS = columns_from_schema(SCHEMA)
NAMES = "张王李赵刘陈杨黄周吴徐孙胡朱高林何郭马罗"
DEPTS = ["人事处", "教务处", "计算机科学与技术学院", "外国语学院", "数学科学学院", "图书馆", "后勤保障处"]
TITLES = ["教授", "副教授", "讲师", "助教", "研究员", None]


def staff(i: int, version: int = 0) -> list[str | None]:
    return [
        f"{i:010d}",
        NAMES[i % 20] + NAMES[(i // 20 + version) % 20] + ("华" if i % 3 else ""),
        "男" if i % 2 else "女",
        f"19{55 + i % 45}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        DEPTS[(i + version) % len(DEPTS)],
        TITLES[i % len(TITLES)],
        f"{3000 + (i * 7 + version * 13) % 20000}.{i % 100:02d}",
        f"20{i % 24:02d}-09-01 08:{i % 60:02d}:00" + (".5" if i % 4 == 0 else ""),
        f"2026-11-{1 + (i + version) % 28:02d} 13:15:36",
    ]


def log(message: str) -> None:
    print(message, flush=True)


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


class Header:
    def __init__(
        self,
        kind: str,
        subscription: str,
        sequence: int,
        builds_on: int | None,
        expected: dict[str, Any] | None,
    ) -> None:
        self.kind, self.subscription, self.sequence, self.builds_on = kind, subscription, sequence, builds_on
        self.package_id = f"bench-{subscription}-{sequence}"
        self.schema, self.catalog, self.expected_state = SCHEMA, {"provider": "人事处"}, expected


# ---------------------------------------------------------------- data files


def write_snapshot(path: Path, rows: int) -> tuple[Path, LtHash]:
    """Payload with ops (store) and plain CSV (baseline); the platform's digest of the rows."""
    digest = LtHash()
    keys = key_indexes(COLUMNS)
    plain = path.with_suffix(".plain.csv")
    batch: list[tuple[bytes, bytes]] = []
    with path.open("w", encoding="utf-8") as ops, plain.open("w", encoding="utf-8") as raw:
        for i in range(rows):
            line = encode_values(staff(i))
            ops.write("U," + line + "\n")
            raw.write(line + "\n")
            batch.append(row_item(staff(i), keys))
            if len(batch) >= 4096:
                digest.add([k for k, _ in batch], [v for _, v in batch])
                batch = []
    digest.add([k for k, _ in batch], [v for _, v in batch])
    return plain, digest


def delta_rows(base: int, count: int) -> tuple[list[list[str | None]], list[str]]:
    """Updates spread over the whole key range (70%), inserts (20%), deletes (10%)."""
    updates = [staff(i, 1) for i in range(0, base, max(1, base // int(count * 0.7)))][: int(count * 0.7)]
    inserts = [staff(base + i) for i in range(int(count * 0.2))]
    deletes = [
        f"{i:010d}" for i in range(base // int(count * 0.1) // 2 + 1, base, max(1, base // int(count * 0.1)))
    ]
    updated = {u[0] for u in updates}
    deletes = [d for d in deletes if d not in updated][: int(count * 0.1)]
    return updates + inserts, deletes


def write_delta(path: Path, upserts: list[list[str | None]], deletes: list[str]) -> Path:
    plain = path.with_suffix(".plain.csv")
    with path.open("w", encoding="utf-8") as ops, plain.open("w", encoding="utf-8") as raw:
        for row in upserts:
            line = encode_values(row)
            ops.write("U," + line + "\n")
            raw.write("U," + line + "\n")
        for key in deletes:
            line = encode_values([key] + [None] * (len(COLUMNS) - 1))
            ops.write("D," + line + "\n")
            raw.write("D," + line + "\n")
    return plain


def make_package(directory: Path, payload: Path, header: Header, platform: Any, agent: Any) -> Path:
    out = directory / f"{header.package_id}-{uuid.uuid4().hex[:8]}.pkg"
    with (
        PackageWriter(
            out,
            kind=header.kind,
            sender=platform,
            recipient=agent.public_bundle(),
            subscription=header.subscription,
            sequence=header.sequence,
            builds_on=header.builds_on,
            catalog=header.catalog,
            schema=SCHEMA,
            expected_state=header.expected_state,
        ) as writer,
        payload.open("rb") as source,
    ):
        while chunk := source.read(1 << 20):
            writer.write(chunk)
    return out


# ---------------------------------------------------------------- databases


def fresh_pg_schema() -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    url = sa.make_url(PG).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop_pg_schema(schema: str) -> None:
    engine = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


def psql(schema: str, *commands: str, script: str | None = None) -> float:
    """Run psql (search_path = schema); returns the wall time."""
    url = sa.make_url(PG)
    env = dict(os.environ, PGOPTIONS=f"-csearch_path={schema}")
    args = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        url.host or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-U",
        url.username or "postgres",
        url.database or "test",
    ]
    for command in commands:
        args += ["-c", command]
    if script is not None:
        args += ["-f", script]
    start = time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def create_like(url: str, name: str) -> None:
    engine = sa.create_engine(url)
    dialect = dialect_for(engine.dialect)
    table = build_table(dialect, name, COLUMNS, pk_name=f"pk_{name}")
    with engine.begin() as conn:
        for statement in ddl_statements(dialect, table):
            conn.exec_driver_sql(statement, ())
    engine.dispose()


# ---------------------------------------------------------------- benches


def bench_pg_snapshot(
    work: Path, rows: int, keys: tuple[Any, Any], results: dict[str, Any]
) -> tuple[str, str, LtHash]:
    platform, agent = keys
    payload = work / "snapshot.csv"
    plain, digest = write_snapshot(payload, rows)
    package = make_package(
        work, payload, Header("snapshot", "bench-pg", 1, None, digest.summary()), platform, agent
    )
    url, schema = fresh_pg_schema()
    create_like(url, "baseline_copy")
    base = psql(schema, f"\\copy baseline_copy FROM '{plain}' WITH (FORMAT csv)")
    store = TableStore(url)
    start = time.perf_counter()
    with open_package(
        package, trusted_senders={"platform": platform.public_bundle()}, recipient=agent
    ) as pkg:
        result = store.apply(pkg.header, pkg.plaintext(), "staff")
    ours = time.perf_counter() - start
    store.close()
    assert result.applied and result.match, result
    ratio = base / ours
    log(
        f"pg_snapshot {rows} rows: store {rate(rows, ours):,.0f} rows/s ({ours:.1f}s, encrypted package) | "
        f"psql \\copy {rate(rows, base):,.0f} rows/s ({base:.1f}s) | ratio {ratio:.2f} (target >= 0.6)"
    )
    results["pg_snapshot"] = {
        "rows": rows,
        "rows_per_s": rate(rows, ours),
        "baseline_rows_per_s": rate(rows, base),
        "ratio": ratio,
    }
    return url, schema, digest


def bench_pg_delta(
    work: Path,
    url: str,
    schema: str,
    base: LtHash,
    base_rows: int,
    count: int,
    name: str,
    results: dict[str, Any],
) -> None:
    upserts, deletes = delta_rows(base_rows, count)
    payload = work / f"{name}.csv"
    plain = write_delta(payload, upserts, deletes)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS baseline_delta")
        conn.exec_driver_sql("CREATE TABLE baseline_delta AS SELECT * FROM staff")
        conn.exec_driver_sql('ALTER TABLE baseline_delta ADD PRIMARY KEY ("GH")')
        conn.exec_driver_sql("ANALYZE baseline_delta")
    engine.dispose()
    cols = ", ".join(f'"{c.name}"' for c in COLUMNS)
    updates = ", ".join(f'"{c.name}" = EXCLUDED."{c.name}"' for c in COLUMNS if not c.primary_key)
    script = work / f"{name}.sql"
    script.write_text(
        "BEGIN;\n"
        "CREATE TEMP TABLE d (op char(1), LIKE baseline_delta) ON COMMIT DROP;\n"
        f"\\copy d FROM '{plain}' WITH (FORMAT csv)\n"
        "ANALYZE d;\n"
        f"INSERT INTO baseline_delta ({cols}) SELECT {cols} FROM d WHERE op = 'U' "
        f'ON CONFLICT ("GH") DO UPDATE SET {updates};\n'
        'DELETE FROM baseline_delta t USING d WHERE d.op = \'D\' AND t."GH" = d."GH";\n'
        "COMMIT;\n",
        encoding="utf-8",
    )
    baseline = psql(schema, script=str(script))
    store = TableStore(url)
    position = store.position("bench-pg")
    assert position is not None
    expected = _expected_after_delta(base, base_rows, upserts, deletes)
    header = Header("delta", "bench-pg", position.sequence + 1, position.sequence, expected)
    start = time.perf_counter()
    with payload.open("rb") as stream:
        result = store.apply(header, stream, "staff")  # type: ignore[arg-type]
    ours = time.perf_counter() - start
    store.close()
    assert result.applied, result
    total = len(upserts) + len(deletes)
    ratio = baseline / ours
    log(
        f"{name}: {total} changes into {base_rows} rows: "
        f"store {rate(total, ours):,.0f} rows/s ({ours:.1f}s) | "
        f"psql by hand {rate(total, baseline):,.0f} rows/s ({baseline:.1f}s) | "
        f"ratio {ratio:.2f} (target >= 0.7) | "
        f"digest match {result.match}"
    )
    results[name] = {
        "table_rows": base_rows,
        "delta_rows": total,
        "rows_per_s": rate(total, ours),
        "baseline_rows_per_s": rate(total, baseline),
        "ratio": ratio,
        "digest_match": result.match,
    }


def _expected_after_delta(
    base: LtHash, base_rows: int, upserts: list[list[str | None]], deletes: list[str]
) -> dict[str, Any]:
    """What the platform would sign: the base digest minus replaced/deleted rows plus new ones."""
    keys = key_indexes(COLUMNS)
    digest = base.copy()
    replaced = [int(r[0]) for r in upserts if int(r[0]) < base_rows] + [int(k) for k in deletes]  # type: ignore[arg-type]
    old = [row_item(staff(i), keys) for i in replaced]
    new = [row_item(r, keys) for r in upserts]
    digest.remove([k for k, _ in old], [v for _, v in old])
    digest.add([k for k, _ in new], [v for _, v in new])
    return digest.summary()


def bench_verify(url: str, rows: int, results: dict[str, Any]) -> None:
    store = TableStore(url)
    start = time.perf_counter()
    result = store.verify("bench-pg")
    ours = time.perf_counter() - start
    store.close()
    engine = sa.create_engine(url)
    start = time.perf_counter()
    with engine.connect() as conn:
        for _ in conn.exec_driver_sql(
            "SELECT * FROM staff", (), execution_options={"stream_results": True, "yield_per": 2000}
        ):
            pass
    base = time.perf_counter() - start
    engine.dispose()
    log(
        f"pg_verify {result.rows} rows: {rate(result.rows, ours):,.0f} rows/s ({ours:.1f}s), "
        f"match {result.match} | "
        f"bare SELECT fetch {rate(result.rows, base):,.0f} rows/s | ratio {base / ours:.2f}"
    )
    results["pg_verify"] = {
        "rows": result.rows,
        "rows_per_s": rate(result.rows, ours),
        "baseline_rows_per_s": rate(result.rows, base),
        "ratio": base / ours,
        "match": result.match,
    }


def bench_sqlite(work: Path, rows: int, results: dict[str, Any]) -> None:
    payload = work / "snapshot.csv"
    url = f"sqlite:///{work / 'bench.db'}"
    store = TableStore(url)
    start = time.perf_counter()
    with payload.open("rb") as stream:
        result = store.apply(Header("snapshot", "bench-sqlite", 1, None, None), stream, "staff")  # type: ignore[arg-type]
    ours = time.perf_counter() - start
    store.close()
    assert result.applied
    import sqlite3

    data = [
        [
            to_python(v, c.type) if c.type.family.value in ("integer", "float") else v
            for v, c in zip(staff(i), COLUMNS, strict=True)
        ]
        for i in range(rows)
    ]
    def bare(journal: str) -> float:
        """The bare loop into a fresh copy of the table, in the given journal mode."""
        path = work / f"bare-{journal}.db"
        create_like(f"sqlite:///{path}", "staff")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA journal_mode={journal}")
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO staff VALUES ({', '.join('?' * len(COLUMNS))})", data)
        conn.execute("COMMIT")
        seconds = time.perf_counter() - start
        conn.close()
        return seconds

    base = bare("delete")  # SQLite's default: the target's baseline
    base_wal = bare("wal")  # the journal mode the store keeps its databases in
    ratio = base / ours
    log(
        f"sqlite_snapshot {rows} rows: store {rate(rows, ours):,.0f} rows/s ({ours:.1f}s) | bare executemany "
        f"{rate(rows, base):,.0f} rows/s ({base:.1f}s, rows already in memory) | "
        f"ratio {ratio:.2f} (target >= 0.7) | the same bare loop into a WAL database as the store's: "
        f"{rate(rows, base_wal):,.0f} rows/s, ratio {base_wal / ours:.2f}"
    )
    results["sqlite_snapshot"] = {
        "rows": rows,
        "rows_per_s": rate(rows, ours),
        "baseline_rows_per_s": rate(rows, base),
        "ratio": ratio,
        "wal_baseline_rows_per_s": rate(rows, base_wal),
        "wal_ratio": base_wal / ours,
    }


def bench_mariadb(work: Path, rows: int, results: dict[str, Any]) -> None:
    database = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(MYSQL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    url = sa.make_url(MYSQL).set(database=database).update_query_dict({"charset": "utf8mb4"})
    try:
        store = TableStore(url)
        start = time.perf_counter()
        with (work / "snapshot.csv").open("rb") as stream:
            result = store.apply(Header("snapshot", "bench-my", 1, None, None), stream, "staff")  # type: ignore[arg-type]
        ours = time.perf_counter() - start
        store.close()
        assert result.applied
        create_like(url.render_as_string(hide_password=False), "bare")
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            data = [staff(i) for i in range(rows)]
            start = time.perf_counter()
            for first in range(0, rows, 4096):
                cursor.executemany(
                    f"INSERT INTO bare VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                    data[first : first + 4096],
                )
            conn.connection.driver_connection.commit()  # type: ignore[union-attr]
            base = time.perf_counter() - start
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE `{database}`")
        admin.dispose()
    log(
        f"mariadb_snapshot {rows} rows: store {rate(rows, ours):,.0f} rows/s "
        f"({ours:.1f}s, target >= 100,000) | "
        f"bare PyMySQL executemany {rate(rows, base):,.0f} rows/s | ratio {base / ours:.2f}"
    )
    results["mariadb_snapshot"] = {
        "rows": rows,
        "rows_per_s": rate(rows, ours),
        "baseline_rows_per_s": rate(rows, base),
        "ratio": base / ours,
    }


def bench_big(work: Path, rows: int, delta: int, keys: tuple[Any, Any], results: dict[str, Any]) -> None:
    """M-row snapshot in a child process (peak RSS), then the delta into it."""
    platform, agent = keys
    payload = work / "big.csv"
    _, digest = write_snapshot(payload, rows)
    package = make_package(
        work, payload, Header("snapshot", "bench-pg", 1, None, digest.summary()), platform, agent
    )
    url, schema = fresh_pg_schema()
    try:
        code = (
            "import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from connectors.stores.tables import TableStore;"
            "from protocol.keys import load_keys; from protocol.package import open_package;"
            "platform = load_keys(sys.argv[4]); agent = load_keys(sys.argv[5]);"
            "store = TableStore(sys.argv[2]);"
            "t = time.perf_counter();"
            "pkg = open_package(sys.argv[3], trusted_senders={'platform': platform.public_bundle()},"
            " recipient=agent);"
            "r = store.apply(pkg.header, pkg.plaintext(), 'staff');"
            # VmHWM: each process image's own peak (ru_maxrss would include the parent's RSS
            # inherited before exec); the row-check workers' peaks are added to the applier's
            "from connectors.stores.tables.rowcheck import worker_pids;"
            "st = lambda p: open(f'/proc/{p}/status').read().split('VmHWM:')[1];"
            "hwm = lambda p: int(st(p).split()[0]);"
            "workers = [hwm(p) for p in worker_pids()];"
            "print(time.perf_counter() - t, r.rows, hwm('self'), sum(workers), len(workers))"
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(Path(__file__).resolve().parents[1]),
                url,
                str(package),
                str(work / "keys-platform"),
                str(work / "keys-agent"),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        applier_mb, workers_mb, workers = int(out[2]) / 1024, int(out[3]) / 1024, int(out[4])
        peak_mb = applier_mb + workers_mb  # sum of each process's peak: an upper bound of the total
        seconds = float(out[0])
        log(
            f"pg_snapshot {rows} rows in a child: {rate(rows, seconds):,.0f} rows/s ({seconds:.1f}s), "
            f"peak RSS {peak_mb:.0f} MB = applier {applier_mb:.0f} MB + {workers} row-check workers "
            f"{workers_mb:.0f} MB (target <= 200)"
        )
        results["pg_snapshot_big"] = {
            "rows": rows,
            "rows_per_s": rate(rows, seconds),
            "peak_rss_mb": peak_mb,
            "applier_rss_mb": applier_mb,
            "workers_rss_mb": workers_mb,
            "workers": workers,
        }
        bench_pg_delta(work, url, schema, digest, rows, delta, "pg_delta_big", results)
    finally:
        drop_pg_schema(schema)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--delta-rows", type=int, default=None, help="default: 100,000 (or rows/10 if smaller)"
    )
    parser.add_argument("--big-rows", type=int, default=None, help="default: 5 x rows; 0 skips")
    parser.add_argument("--skip", action="append", default=[], choices=["pg", "sqlite", "mariadb", "big"])
    args = parser.parse_args(argv)
    rows = args.rows
    delta = args.delta_rows or min(100_000, max(10, rows // 10))
    big = 5 * rows if args.big_rows is None else args.big_rows
    results: dict[str, Any] = {"bench": "tables", "rows": rows}
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        work = Path(tmp)
        platform = init_keys(work / "keys-platform", "platform")
        agent = init_keys(work / "keys-agent", "agent-bench")
        keys = (platform, agent)
        if "pg" not in args.skip:
            url, schema, snapshot_digest = bench_pg_snapshot(work, rows, keys, results)
            try:
                bench_pg_delta(work, url, schema, snapshot_digest, rows, delta, "pg_delta", results)
                bench_verify(url, rows, results)
            finally:
                drop_pg_schema(schema)
        else:
            write_snapshot(work / "snapshot.csv", rows)
        if "sqlite" not in args.skip:
            bench_sqlite(work, rows, results)
        if "mariadb" not in args.skip:
            bench_mariadb(work, rows, results)
        if big and "big" not in args.skip:
            bench_big(work, big, delta, keys, results)
    summary = results.get("pg_snapshot", {})
    results.update(
        {
            "rows_per_s": summary.get("rows_per_s"),
            "baseline_rows_per_s": summary.get("baseline_rows_per_s"),
            "ratio": summary.get("ratio"),
            "peak_rss_mb": results.get("pg_snapshot_big", {}).get("peak_rss_mb"),
        }
    )
    print(json.dumps(results, ensure_ascii=False, default=float))


if __name__ == "__main__":
    main()
