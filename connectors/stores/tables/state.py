"""The agent's own tables in the target database: positions (state) and provenance (catalog).

The state row of a subscription is written in the same transaction as the rows a package
changes, so "applied" and "position moved" can never disagree. It also claims the table:
a table the agent did not create (no state row) is never touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from connectors.stores.tables.names import CATALOG_TABLE, STATE_TABLE

_BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_NAME = sa.Unicode(200)

metadata = sa.MetaData()

state_table = sa.Table(
    STATE_TABLE,
    metadata,
    sa.Column("subscription_id", sa.String(200), primary_key=True, autoincrement=False),
    sa.Column("table_name", _NAME, nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("package_id", sa.String(200)),
    sa.Column("schema_json", _TEXT, nullable=False),
    sa.Column("digest", _BLOB),
    sa.Column("local_summary", _TEXT),
    sa.Column("expected_summary", _TEXT),
    sa.Column("applied_at", sa.String(40)),
    sa.Column("revoked_at", sa.String(40)),
    sa.Column("pending_json", _TEXT),
    sa.Column("pending_digest", _BLOB),
    comment="edu-sync-agent: subscription positions and table digests (agent-owned, do not modify)",
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

catalog_table = sa.Table(
    CATALOG_TABLE,
    metadata,
    sa.Column("table_name", _NAME, primary_key=True, autoincrement=False),
    sa.Column("subscription_id", sa.String(200), nullable=False),
    sa.Column("resource_name", sa.Unicode(400)),
    sa.Column("mounted_resource_name", sa.Unicode(400)),
    sa.Column("provider", sa.Unicode(400)),
    sa.Column("sharing_type", sa.String(40)),
    sa.Column("security_level", sa.Unicode(100)),
    sa.Column("agreement_id", sa.Unicode(200)),
    sa.Column("last_sequence", sa.BigInteger),
    sa.Column("last_applied_at", sa.String(40)),
    sa.Column("notice", sa.Unicode(400)),
    comment="edu-sync-agent: provenance of synced tables (the provider's data; agent-owned)",
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


@dataclass
class StateRow:
    subscription_id: str
    table_name: str
    sequence: int
    package_id: str | None
    schema: list[dict[str, Any]]
    digest: bytes | None
    local_summary: dict[str, Any] | None
    expected_summary: dict[str, Any] | None
    applied_at: str | None
    revoked_at: str | None
    pending: dict[str, Any] | None
    pending_digest: bytes | None


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def read_state(conn: Connection, subscription_id: str, *, for_update: bool = False) -> StateRow | None:
    query = sa.select(state_table).where(state_table.c.subscription_id == subscription_id)
    if for_update and conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        return None
    return StateRow(
        subscription_id=row["subscription_id"],
        table_name=row["table_name"],
        sequence=int(row["sequence"]),
        package_id=row["package_id"],
        schema=_json(row["schema_json"]) or [],
        digest=bytes(row["digest"]) if row["digest"] is not None else None,
        local_summary=_json(row["local_summary"]),
        expected_summary=_json(row["expected_summary"]),
        applied_at=row["applied_at"],
        revoked_at=row["revoked_at"],
        pending=_json(row["pending_json"]),
        pending_digest=bytes(row["pending_digest"]) if row["pending_digest"] is not None else None,
    )


def all_states(conn: Connection) -> list[StateRow]:
    ids = conn.execute(sa.select(state_table.c.subscription_id)).scalars().all()
    return [s for s in (read_state(conn, i) for i in ids) if s is not None]


def owner_of_table(conn: Connection, table_name: str) -> str | None:
    query = sa.select(state_table.c.subscription_id).where(state_table.c.table_name == table_name)
    return conn.execute(query).scalars().first()


def write_state(conn: Connection, subscription_id: str, **values: Any) -> None:
    """Insert or update the subscription's state row (JSON fields given as Python objects)."""
    for name in ("schema", "local_summary", "expected_summary", "pending"):
        if name in values:
            column = "schema_json" if name == "schema" else ("pending_json" if name == "pending" else name)
            value = values.pop(name)
            values[column] = (
                json.dumps(value, ensure_ascii=False, sort_keys=True) if value is not None else None
            )
    exists = conn.execute(
        sa.select(state_table.c.subscription_id).where(state_table.c.subscription_id == subscription_id)
    ).first()
    if exists:
        conn.execute(
            sa.update(state_table).where(state_table.c.subscription_id == subscription_id).values(**values)
        )
    else:
        conn.execute(sa.insert(state_table).values(subscription_id=subscription_id, **values))


def write_catalog(
    conn: Connection,
    table_name: str,
    subscription_id: str,
    catalog: Mapping[str, Any] | None,
    sequence: int,
    now: str,
) -> None:
    catalog = catalog or {}
    agreement = catalog.get("agreement")
    agreement_id = agreement.get("id") if isinstance(agreement, Mapping) else catalog.get("agreement_id")
    provider = catalog.get("provider")
    values = {
        "subscription_id": subscription_id,
        "resource_name": catalog.get("resource_name"),
        "mounted_resource_name": catalog.get("mounted_resource_name"),
        "provider": provider,
        "sharing_type": catalog.get("sharing_type"),
        "security_level": catalog.get("security_level"),
        "agreement_id": agreement_id,
        "last_sequence": sequence,
        "last_applied_at": now,
        "notice": f"本表为{provider or '数据提供部门'}共享数据的副本，数据归提供部门所有，仅限授权用途使用",
    }
    conn.execute(sa.delete(catalog_table).where(catalog_table.c.table_name == table_name))
    conn.execute(sa.insert(catalog_table).values(table_name=table_name, **values))


def delete_catalog(conn: Connection, table_name: str) -> None:
    conn.execute(sa.delete(catalog_table).where(catalog_table.c.table_name == table_name))
