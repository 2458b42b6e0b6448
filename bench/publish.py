"""Publish throughput: `edu-hub publish` (snapshot) of an N-row PostgreSQL table vs `psql \\copy ... TO`.

Both sides read the same rows (the subscribed columns, filtered) in the same run; the hub also
canonicalises, digests, records its published state, compresses, encrypts and signs.
Prints both figures, the ratio and peak RSS of the publishing process, then one JSON line.

    nice python bench/publish.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_publish"


def prepare(rows: int) -> str:
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {SCHEMA}"))
        conn.execute(
            sa.text(
                f'CREATE TABLE {SCHEMA}."T_STAFF" ("ID" integer PRIMARY KEY, "XM" varchar(50), '
                '"SECRET" varchar(50), "STATUS" varchar(10), "UPDATETIME" varchar(50) NOT NULL)'
            )
        )
        conn.execute(
            sa.text(
                f"INSERT INTO {SCHEMA}.\"T_STAFF\" SELECT g, '教师' || g, 'S' || g, 'active', "
                "to_char(timestamp '2020-01-01' + g * interval '1 second', 'YYYY-MM-DD HH24:MI:SS') "
                "FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
        conn.execute(sa.text(f'ANALYZE {SCHEMA}."T_STAFF"'))
    engine.dispose()
    return (
        sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={SCHEMA}"}).render_as_string(False)
    )


def change_source(rows: int) -> int:
    """1% of the rows updated (cursor moved), 0.1% deleted (scattered), 0.1% inserted."""
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    table = f'{SCHEMA}."T_STAFF"'
    new_stamp = "'2030-01-01 00:00:00'"
    with engine.connect() as conn:
        updated = conn.execute(
            sa.text(
                f'UPDATE {table} SET "XM" = "XM" || \'*\', "UPDATETIME" = {new_stamp} WHERE "ID" % 100 = 1'
            )
        ).rowcount
        conn.execute(sa.text(f'DELETE FROM {table} WHERE "ID" % 1000 = 7'))
        conn.execute(
            sa.text(
                f"INSERT INTO {table} SELECT g, 'new', 'S', 'active', {new_stamp} "
                "FROM generate_series(CAST(:a AS integer), CAST(:b AS integer)) g"
            ),
            {"a": rows + 1, "b": rows + rows // 1000},
        )
    engine.dispose()
    return int(updated) + rows // 1000


def baseline(out: Path, where: str = "true") -> float:
    """psql \\copy of the same projection and filter (plus ``where``) to a CSV file."""
    query = f'SELECT "ID", "XM", "UPDATETIME" FROM {SCHEMA}."T_STAFF" WHERE "STATUS" = \'active\' AND {where}'
    start = time.perf_counter()
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-q",
            "-c",
            f"\\copy ({query}) TO '{out}' WITH (FORMAT csv)",
        ],
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    url = prepare(args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        from protocol.keys import init_keys
        from tests.test_hub_common import subscription_text

        hub = work / "hub"
        subprocess.run([sys.executable, "-m", "hub.cli", "init", str(hub)], check=True, capture_output=True)
        keys = init_keys(work / "agent-keys", "school-1")
        (work / "b.json").write_text(keys.public_bundle().to_json())
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hub.cli",
                "agent",
                "add",
                str(hub),
                "--id",
                "school-1",
                "--keys",
                str(work / "b.json"),
            ],
            check=True,
            capture_output=True,
        )
        (work / "sub.yaml").write_text(subscription_text(url), encoding="utf-8")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hub.cli",
                "subscription",
                "add",
                str(hub),
                "--file",
                str(work / "sub.yaml"),
            ],
            check=True,
            capture_output=True,
        )
        base_s = baseline(work / "copy.csv")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hub.cli", "publish", str(hub)], check=True, cwd=ROOT)
        hub_s = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        changed = change_source(args.rows)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hub.cli", "publish", str(hub)], check=True, cwd=ROOT)
        delta_s = time.perf_counter() - start
        delta_base_s = baseline(work / "delta.csv", "\"UPDATETIME\" >= '2030-01-01'")
        rate, base_rate = args.rows / hub_s, args.rows / base_s
        print(f"edu-hub publish (snapshot): {args.rows} rows in {hub_s:.2f}s = {rate:,.0f} rows/s")
        print(f"psql \\copy TO csv:          {args.rows} rows in {base_s:.2f}s = {base_rate:,.0f} rows/s")
        print(f"ratio {rate / base_rate:.3f}, peak RSS of the publishing process {peak_mb:.0f} MB")
        print(
            f"delta publish ({changed} changed rows, {args.rows // 1000} scattered deletes, in a "
            f"{args.rows}-row table): {delta_s:.2f}s; psql \\copy of the changed rows: {delta_base_s:.2f}s"
        )
        print(
            json.dumps(
                {
                    "bench": "hub.publish_pg_snapshot",
                    "rows": args.rows,
                    "rows_per_s": round(rate),
                    "baseline_rows_per_s": round(base_rate),
                    "ratio": round(rate / base_rate, 4),
                    "peak_rss_mb": round(peak_mb, 1),
                    "delta_s": round(delta_s, 2),
                    "delta_baseline_s": round(delta_base_s, 2),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        engine.dispose()


if __name__ == "__main__":
    main()
