"""Shared helpers for the table-store tests: a staff schema, a source model, packages.

``Source`` plays the platform: it holds the source rows in canonical form, produces
snapshot/delta payloads exactly per the contract and the expected digest with the same
protocol code the hub uses; ``table_contents`` is the independent check (a plain SELECT
through SQLAlchemy, canonicalised) that tests compare with the source.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from protocol.canonical import canonicalize, columns_from_schema, encode_record, encode_values, key_indexes
from protocol.digest import digest_of, row_item

STAFF_SCHEMA: list[dict[str, Any]] = [
    {"name": "GH", "type": "VARCHAR2(20)", "primary_key": True, "label": "工号", "meaning": "教职工工号"},
    {"name": "XM", "type": "NVARCHAR2(50)", "not_null": True, "label": "姓名", "meaning": "教职工姓名"},
    {"name": "XB", "type": "CHAR(1)", "label": "性别", "meaning": "性别码"},
    {"name": "CSRQ", "type": "DATE", "format": "YYYY-MM-DD", "label": "出生日期", "meaning": "出生日期"},
    {"name": "GZ", "type": "NUMBER(10,2)", "label": "基本工资", "meaning": "月基本工资（元）"},
    {"name": "RZSJ", "type": "TIMESTAMP", "label": "入职时间", "meaning": "入职时间"},
    {
        "name": "UPDATETIME",
        "type": "VARCHAR2(50)",
        "not_null": True,
        "format": "YYYY-MM-DD HH:MM:SS",
        "label": "更新时间",
        "meaning": "数据更新时间",
    },
    {"name": "ZP", "type": "BLOB", "label": "照片", "meaning": "照片"},
    {"name": "BZ", "type": "CLOB", "label": "备注", "meaning": "备注"},
]

CATALOG = {
    "provider": "人事处",
    "resource_name": "人事处数据-教职工基本信息",
    "mounted_resource_name": "教职工基本信息表",
    "sharing_type": "authorised",
    "security_level": "二级",
    "agreement": {"id": "AGR-2026-001", "valid_from": "2026-01-01", "valid_until": "2027-01-01"},
}


def staff_row(i: int, variant: int = 0) -> list[str | None]:
    """A realistic canonical staff row; ``variant`` changes the non-key values."""
    names = ["张三", "李四", "王五", "赵六", "钱七", "孙八", "周九", "吴十"]
    return [
        f"T{i:06d}",
        f"{names[(i + variant) % len(names)]}{i}",
        "男" if (i + variant) % 2 else "女",
        f"19{60 + i % 40:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        f"{(i * 37 + variant * 101) % 100000}.{(i + variant) % 100:02d}",
        f"20{10 + i % 15:02d}-09-01 08:30:00" + (".25" if i % 3 == 0 else ""),
        f"2026-11-{1 + (i + variant) % 28:02d} 13:15:36",
        None if i % 4 else "\\x" + bytes([i % 256, (i + variant) % 256]).hex(),
        None if i % 5 == 0 else ("" if i % 5 == 1 else f'备注,含"引号"\n第{variant}版'),
    ]


@dataclass
class Header:
    """The fields of protocol.header.PackageHeader the store reads."""

    kind: str
    package_id: str
    subscription: str
    sequence: int
    builds_on: int | None
    schema: list[Any]
    catalog: dict[str, Any] = field(default_factory=lambda: dict(CATALOG))
    expected_state: dict[str, Any] | None = None


class Source:
    """The platform's view of one subscription: canonical rows by key, sequence, packages."""

    def __init__(self, schema: list[dict[str, Any]] | None = None, subscription: str = "sub-staff") -> None:
        self.schema = schema or STAFF_SCHEMA
        self.columns = columns_from_schema(self.schema)
        self.keys = key_indexes(self.columns)
        self.rows: dict[tuple[str | None, ...], list[str | None]] = {}
        self.sequence = 0
        self.subscription = subscription

    def key(self, row: Sequence[str | None]) -> tuple[str | None, ...]:
        return tuple(row[i] for i in self.keys)

    def expected(self) -> dict[str, Any]:
        return digest_of(row_item(r, self.keys) for r in self.rows.values()).summary()

    def snapshot(self, rows: Sequence[list[str | None]]) -> tuple[Header, bytes]:
        self.rows = {self.key(r): list(r) for r in rows}
        self.sequence += 1
        payload = b"".join(encode_record("U", r) for r in self.rows.values())
        header = Header(
            "snapshot", f"pkg-{self.sequence}", self.subscription, self.sequence, None, self.schema
        )
        header.expected_state = self.expected()
        return header, payload

    def delta(
        self, upserts: Sequence[list[str | None]] = (), deletes: Sequence[tuple[str | None, ...]] = ()
    ) -> tuple[Header, bytes]:
        records = []
        for row in upserts:
            self.rows[self.key(row)] = list(row)
            records.append(encode_record("U", row))
        for key in deletes:
            self.rows.pop(key, None)
            values: list[str | None] = [None] * len(self.columns)
            for position, value in zip(self.keys, key, strict=True):
                values[position] = value
            records.append(encode_record("D", values))
        self.sequence += 1
        header = Header(
            "delta", f"pkg-{self.sequence}", self.subscription, self.sequence, self.sequence - 1, self.schema
        )
        header.expected_state = self.expected()
        return header, b"".join(records)

    def canonical_set(self) -> set[str]:
        return {encode_values(r) for r in self.rows.values()}


def spy_loaders(monkeypatch: Any, dialect_class: type[Any]) -> list[str]:
    """The kinds of snapshot loaders and delta appliers ``dialect_class`` hands out, in order
    (``monkeypatch`` is pytest's fixture)."""
    seen: list[str] = []
    for method in ("snapshot_loader", "delta_applier"):
        real = getattr(dialect_class, method)

        def spy(self: Any, *args: Any, _real: Any = real) -> Any:
            made = _real(self, *args)
            seen.append(type(made).__name__)
            return made

        monkeypatch.setattr(dialect_class, method, spy)
    return seen


def stream(payload: bytes) -> io.BytesIO:
    return io.BytesIO(payload)


def table_contents(url: str, table: str, schema: list[dict[str, Any]]) -> set[str]:
    """The independent check: a plain SELECT of the table, canonicalised, as encoded rows."""
    columns = columns_from_schema(schema)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TIME ZONE 'UTC'")
            elif conn.dialect.name == "mysql":
                conn.exec_driver_sql("SET time_zone = '+00:00'")
            preparer = conn.dialect.identifier_preparer
            names = ", ".join(preparer.quote_identifier(c.name) for c in columns)
            rows = conn.exec_driver_sql(
                f"SELECT {names} FROM {preparer.quote_identifier(table)}", ()
            ).fetchall()
    finally:
        engine.dispose()
    return {encode_values([canonicalize(v, c) for v, c in zip(row, columns, strict=True)]) for row in rows}
