"""Shared helpers of the hub tests: a hub with one or two agents, a replaying agent, source tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hub.cli import main as hub_main
from protocol import canonical
from protocol import digest as table_digest
from protocol.keys import PartyKeys, init_keys, load_keys
from protocol.layout import INBOX, sorted_packages
from protocol.package import open_package

CATALOG = """
id: {sub_id}
catalog:
  provider: 人事处
  resource_name: 人事处数据-教职工基本信息
  mounted_resource_name: 人事处数据-教职工基本信息表
  summary: 教职工基本信息，含 1998 年至今的数据
  data_name: 教职工基本信息
  data_format: 库表
  sharing_type: authorised
  agreement: {{id: XY-2026-001, valid_from: 2026-01-01, valid_until: 2027-12-31}}
  security_level: 三级
  update_frequency: 每天
  provision_method: table
  time_range: 1998年至今
  topic: 教师主题库
  scope: 高校
dictionary:
  - {{name: ID, label: 编号, meaning: 教职工编号, type: INTEGER, not_null: true, primary_key: true}}
  - {{name: XM, label: 姓名, meaning: 姓名, type: VARCHAR2(50)}}
  - {{name: UPDATETIME, label: 更新时间, meaning: 最近一次更新的时间, type: VARCHAR2(50), not_null: true,
     format: "YYYY-MM-DD HH:MM:SS", example: "2015-12-10 13:15:36"}}
source:
  url: "{url}"
  table: T_STAFF
  filter:
    - {{column: STATUS, op: "=", value: active}}
{extra}
subscribers:
{subscribers}
"""


def staff_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "T_STAFF",
        metadata,
        sa.Column("ID", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("XM", sa.String(50)),
        sa.Column("SECRET", sa.String(50)),  # never subscribed: must never leave the source
        sa.Column("STATUS", sa.String(10)),  # filter column
        sa.Column("UPDATETIME", sa.String(50), nullable=False),
    )


class HubFixture:
    def __init__(self, root: Path, agents: list[str]) -> None:
        self.root = root / "hub"
        assert hub_main(["init", str(self.root)]) == 0
        self.platform = load_keys(self.root / "keys")
        self.agent_keys: dict[str, PartyKeys] = {}
        for agent in agents:
            keys = init_keys(root / f"keys-{agent}", agent)
            bundle = root / f"{agent}.json"
            bundle.write_text(keys.public_bundle().to_json())
            assert hub_main(["agent", "add", str(self.root), "--id", agent, "--keys", str(bundle)]) == 0
            self.agent_keys[agent] = keys

    def add_subscription(self, text: str, name: str = "sub.yaml") -> None:
        path = self.root.parent / name
        path.write_text(text, encoding="utf-8")
        assert hub_main(["subscription", "add", str(self.root), "--file", str(path)]) == 0

    def publish(self, *extra: str) -> None:
        assert hub_main(["publish", str(self.root), *extra]) == 0

    def inbox(self, agent: str) -> Path:
        return self.root / "exchange" / agent / INBOX


def subscription_text(
    url: str, sub_id: str = "staff", agents: tuple[str, ...] = ("school-1",), extra: str = ""
) -> str:
    subscribers = "\n".join(f"  - agent: {a}" for a in agents)
    return CATALOG.format(sub_id=sub_id, url=url, subscribers=subscribers, extra=extra)


class ReplayAgent:
    """Applies every package of an inbox in order to a dict, checking the signed expected digest."""

    def __init__(self, hub: HubFixture, agent: str) -> None:
        self.hub = hub
        self.agent = agent
        self.rows: dict[str, list[str | None]] = {}
        self.sequence = 0
        self.plaintexts: list[bytes] = []
        self.headers: list[Any] = []

    def catch_up(self) -> int:
        names, foreign = sorted_packages(p.name for p in self.hub.inbox(self.agent).iterdir())
        assert not foreign, foreign
        applied = 0
        trusted = {self.hub.platform.party_id: self.hub.platform.public_bundle()}
        for name in names:
            if name.sequence <= self.sequence:
                continue
            assert name.sequence == self.sequence + 1, f"gap or duplicate: {name} after {self.sequence}"
            path = self.hub.inbox(self.agent) / name.filename
            with open_package(
                path, trusted_senders=trusted, recipient=self.hub.agent_keys[self.agent]
            ) as pkg:
                header = pkg.header
                data = b"".join(pkg.iter_plaintext())
            self.plaintexts.append(data)
            self.headers.append(header)
            if header.kind == "snapshot":
                self.rows = {}
            else:
                assert header.kind == "delta" and header.builds_on == self.sequence
            columns = canonical.columns_from_schema(header.schema)
            keys = [i for i, c in enumerate(columns) if c.primary_key]
            if header.replace_buckets:  # a bucket resend: the package is the whole of those buckets
                replaced = set(header.replace_buckets)
                self.rows = {
                    k: v
                    for k, v in self.rows.items()
                    if table_digest.bucket_of(k.encode("utf-8")) not in replaced
                }
            for record in canonical.iter_records([data], len(columns)):
                key = canonical.encode_values([record.values[i] for i in keys])
                if record.op == "U":
                    self.rows[key] = record.values
                else:
                    assert key in self.rows, f"delete of an unknown key {key}"
                    del self.rows[key]
            expected = header.expected_state
            local = table_digest.digest_of(
                table_digest.row_item(v, keys) for v in self.rows.values()
            ).summary()
            assert expected == local, "the signed expected digest differs from the state after apply"
            self.sequence = name.sequence
            applied += 1
        return applied

    def table(self) -> dict[str, tuple[str | None, ...]]:
        return {k: tuple(v) for k, v in self.rows.items()}


def source_state(url: str, where_active: bool = True) -> dict[str, tuple[str | None, ...]]:
    """The subscribed projection of the source, canonicalised independently of the hub."""
    engine = sa.create_engine(url)
    columns = [
        canonical.ColumnSpec.from_dict({"name": "ID", "type": "INTEGER", "primary_key": True}),
        canonical.ColumnSpec.from_dict({"name": "XM", "type": "VARCHAR2(50)"}),
        canonical.ColumnSpec.from_dict({"name": "UPDATETIME", "type": "VARCHAR2(50)"}),
    ]
    table = staff_table(sa.MetaData())
    stmt = sa.select(table.c.ID, table.c.XM, table.c.UPDATETIME)
    if where_active:
        stmt = stmt.where(table.c.STATUS == "active")
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    engine.dispose()
    out = {}
    for row in rows:
        values = [canonical.canonicalize(v, c) for v, c in zip(row, columns, strict=True)]
        out[canonical.encode_values([values[0]])] = tuple(values)
    return out


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)
