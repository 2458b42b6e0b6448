"""Oracle and 达梦 DM: no server here, so the store's SQL is compiled with SQLAlchemy's oracle
dialect and dmSQLAlchemy's dialect, checked, and run against a recording DB-API cursor."""

from __future__ import annotations

import sys
import types
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.dialects import oracle

from connectors.stores.tables.dialects import Batch, dialect_for
from connectors.stores.tables.dialects.oracle import DMDialect, OracleDialect
from connectors.stores.tables.schema import build_table, ddl_statements, table_comment
from protocol.canonical import columns_from_schema, encode_record, iter_records
from tests.tables_helpers import CATALOG, STAFF_SCHEMA, staff_row


def _dm_dialect() -> Any:
    """dmSQLAlchemy's sync dialect. Its package __init__ imports an asyncio module that needs a
    helper SQLAlchemy 2.1 removed (``await_fallback``); the sync dialect does not use it."""
    try:
        import dmSQLAlchemy  # noqa: F401
    except ImportError as exc:
        if "await_fallback" not in str(exc) and "dmasync" not in str(exc):
            pytest.skip(f"dmSQLAlchemy is not installed: {exc}")
        stub = types.ModuleType("dmSQLAlchemy.dmasync")
        stub.dialect_async = None  # type: ignore[attr-defined]
        sys.modules["dmSQLAlchemy.dmasync"] = stub
        for name in [
            n
            for n in sys.modules
            if n == "dmSQLAlchemy" or (n.startswith("dmSQLAlchemy.") and n != "dmSQLAlchemy.dmasync")
        ]:
            del sys.modules[name]
    from dmSQLAlchemy import dmpython

    return dmpython.dialect()


@pytest.fixture(params=["oracle", "dm"])
def dialect(request: pytest.FixtureRequest) -> OracleDialect:
    if request.param == "oracle":
        return dialect_for(oracle.dialect())  # type: ignore[return-value]
    return dialect_for(_dm_dialect())  # type: ignore[return-value]


def test_dialect_classes(dialect: OracleDialect) -> None:
    assert isinstance(dialect, OracleDialect)
    assert isinstance(dialect, DMDialect) == (dialect.sa_dialect.name == "dm")
    assert dialect.transactional_ddl is False


def test_create_table_with_types_key_and_comments(dialect: OracleDialect) -> None:
    columns = columns_from_schema(STAFF_SCHEMA)
    table = build_table(dialect, "教职工", columns, pk_name="edu_sync_pk_x_1", comment=table_comment(CATALOG))
    statements = ddl_statements(dialect, table)
    create = statements[0]
    assert create.startswith('CREATE TABLE "教职工"')
    assert '"XM" VARCHAR2(50 CHAR) NOT NULL' in create
    assert "NUMBER(10, 2)" in create
    assert "CLOB" in create and "BLOB" in create
    assert 'CONSTRAINT edu_sync_pk_x_1 PRIMARY KEY ("GH")' in create
    assert any(
        s.startswith('COMMENT ON COLUMN "教职工"."GH" IS') and "工号：教职工工号" in s for s in statements
    )
    assert any(s.startswith('COMMENT ON TABLE "教职工"') and "人事处" in s for s in statements)


def test_type_mapping(dialect: OracleDialect) -> None:
    cases = {
        "VARCHAR2(50)": "VARCHAR2(50 CHAR)",
        "CHAR(2)": "NCHAR(2)",
        "VARCHAR2(4000)": "CLOB",
        "NUMBER(10,2)": "NUMBER(10, 2)",
        "NUMBER": "NUMBER",
        "INTEGER": "NUMBER(38, 0)",
        "BIGINT": "NUMBER(19, 0)",
        "BINARY_DOUBLE": "DOUBLE" if isinstance(dialect, DMDialect) else "BINARY_DOUBLE",
        "DATE": "DATE",
        "TIMESTAMP": "TIMESTAMP",
        "TIMESTAMP WITH TIME ZONE": "TIMESTAMP WITH TIME ZONE",
        "RAW(16)": "VARBINARY(16)" if isinstance(dialect, DMDialect) else "RAW(16)",
        "BLOB": "BLOB",
        "BOOLEAN": "NUMBER(1, 0)",
    }
    for declared, expected in cases.items():
        ctype = columns_from_schema([{"name": "c", "type": declared, "primary_key": True}])[0].type
        rendered = dialect.column_type(ctype).compile(dialect=dialect.sa_dialect)
        assert rendered.upper() == expected, (declared, rendered)


def test_merge_and_delete_sql(dialect: OracleDialect) -> None:
    schema = [
        {"name": 'id"; --', "type": "NUMBER(10)", "primary_key": True},
        {"name": "区", "type": "VARCHAR2(10)", "primary_key": True},
        {"name": "名称", "type": "NVARCHAR2(10)"},
    ]
    columns = columns_from_schema(schema)
    merge = dialect.merge_sql('t"x', columns)
    assert merge == (
        'MERGE INTO "t""x" t USING (SELECT :1 AS "id""; --", :2 AS "区", :3 AS "名称" FROM dual) s '
        'ON (t."id""; --" = s."id""; --" AND t."区" = s."区") '
        'WHEN MATCHED THEN UPDATE SET t."名称" = s."名称" '
        'WHEN NOT MATCHED THEN INSERT ("id""; --", "区", "名称") VALUES (s."id""; --", s."区", s."名称")'
    )
    assert dialect.delete_sql('t"x', columns) == 'DELETE FROM "t""x" WHERE "id""; --" = :1 AND "区" = :2'
    assert dialect.keys_select('t"x', columns, columns[:2], 2) == (
        'SELECT "id""; --", "区", "名称" FROM "t""x" WHERE ("id""; --", "区") IN ((:1, :2), (:3, :4))'
    )
    keys_only = columns_from_schema(schema[:2])
    assert "WHEN MATCHED" not in dialect.merge_sql("t", keys_only)


class _Cursor:
    def __init__(self, log: list[tuple[str, str, Any]]) -> None:
        self.log = log
        self.rowcount = 0

    def execute(self, sql: str, params: Any = None) -> None:
        self.log.append(("execute", sql, params))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [("T000001", "旧", None, None, None, None, "2026-01-01 00:00:00", None, None)]

    def executemany(self, sql: str, rows: list[Any]) -> None:
        self.log.append(("executemany", sql, rows))
        self.rowcount = len(rows)


class _Conn:
    """Just enough of a SQLAlchemy Connection for the dialect's bulk paths."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any]] = []
        cursor = _Cursor(self.log)
        self.connection = types.SimpleNamespace(
            driver_connection=types.SimpleNamespace(cursor=lambda: cursor)
        )

    def exec_driver_sql(self, sql: str, params: Any = None) -> None:
        self.log.append(("exec", sql, params))


def test_delta_runs_merge_with_driver_values(dialect: OracleDialect) -> None:
    columns = columns_from_schema(STAFF_SCHEMA)
    payload = encode_record("U", staff_row(0)) + encode_record("D", ["T000001"] + [None] * 8)
    batch = Batch(list(iter_records([payload], len(columns))))
    conn = _Conn()
    applier = dialect.delta_applier(conn, "教职工", columns)  # type: ignore[arg-type]
    old = list(applier.stage(batch))
    assert old and old[0][0] == "T000001"
    kinds = [(kind, sql.split(" ")[0]) for kind, sql, _ in conn.log]
    assert kinds == [("execute", "SELECT"), ("executemany", "MERGE"), ("executemany", "DELETE")]
    merged = conn.log[1][2][0]
    assert merged[0] == "T000000" and isinstance(merged[4], Decimal)
    assert merged[3] == date(1960, 1, 1) and isinstance(merged[5], datetime)
    assert isinstance(merged[7], bytes)
    assert conn.log[2][2] == [["T000001"]]
    assert applier.upserted == 1 and applier.deleted == 1


def test_snapshot_loader_inserts(dialect: OracleDialect) -> None:
    columns = columns_from_schema(STAFF_SCHEMA)
    batch = Batch(list(iter_records([encode_record("U", staff_row(i)) for i in range(3)], len(columns))))
    conn = _Conn()
    loader = dialect.snapshot_loader(conn, "edu_sync_stage_x_0", columns)  # type: ignore[arg-type]
    loader.load(batch)
    kind, sql, rows = conn.log[0]
    assert kind == "executemany" and sql.startswith('INSERT INTO "edu_sync_stage_x_0" ("GH", "XM"')
    assert "VALUES (:1, :2, :3, :4, :5, :6, :7, :8, :9)" in sql
    assert len(rows) == 3


def test_snapshot_swap_statements(dialect: OracleDialect) -> None:
    """Oracle/DM DDL commits implicitly: the store records an intent, then renames one table at a time."""
    conn = _Conn()
    dialect.rename_swap(conn, '教职工"x', "edu_sync_stage_a_0", "edu_sync_old_a_0", True)  # type: ignore[arg-type]
    assert [sql for _, sql, _ in conn.log] == [
        'ALTER TABLE "教职工""x" RENAME TO "edu_sync_old_a_0"',
        'ALTER TABLE "edu_sync_stage_a_0" RENAME TO "教职工""x"',
    ]
