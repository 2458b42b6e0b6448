"""Tables from a data dictionary, and the rules for changing an existing one.

The agent stores the schema it last applied (state table) and compares the header's
schema with it: identical, or only new nullable columns (applied with ``ALTER TABLE ...
ADD``), is compatible; anything else — a column dropped, renamed, re-typed or made NOT
NULL, a primary-key change — is :class:`SchemaIncompatible`: data is never silently
altered or dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateTable, SetColumnComment, SetTableComment

from connectors.stores.tables.dialects.base import SqlDialect
from connectors.stores.tables.errors import SchemaIncompatible
from connectors.stores.tables.names import check_name
from protocol.canonical import ColumnSpec


def column_comment(column: ColumnSpec) -> str | None:
    """``数据项名称：业务含义`` (and the format), from the dictionary, for the column comment."""
    parts = [p for p in (column.label, column.meaning) if p]
    text = "：".join(parts)
    if column.format:
        text += f"（格式 {column.format}）"
    return text or None


def table_comment(catalog: Mapping[str, Any] | None) -> str | None:
    """Marks the copy as the provider's data (附件一 第七条(四))."""
    if not catalog:
        return None
    name = catalog.get("resource_name") or catalog.get("mounted_resource_name")
    provider = catalog.get("provider")
    if not name:
        return None
    owner = f"，数据归{provider}所有" if provider else ""
    return f"{name}（共享数据副本{owner}，由 edu-sync-agent 同步，请勿修改）"


def build_table(
    dialect: SqlDialect,
    name: str,
    columns: Sequence[ColumnSpec],
    *,
    pk_name: str,
    comment: str | None = None,
) -> sa.Table:
    """The ``sa.Table`` for a dictionary in ``dialect`` (validated column names, PK, NOT NULL, comments).

    ``name`` is the store's checked user table name or one of its own internal names.
    """
    for column in columns:
        check_name(column.name, "column")
    comments = dialect.has_comments
    sa_columns = [
        sa.Column(
            c.name,
            dialect.column_type(c.type),
            nullable=not c.not_null,
            autoincrement=False,
            comment=column_comment(c) if comments else None,
        )
        for c in columns
    ]
    keys = [c.name for c in columns if c.primary_key]
    return sa.Table(
        name,
        sa.MetaData(),
        *sa_columns,
        sa.PrimaryKeyConstraint(*keys, name=pk_name),
        comment=comment if comments else None,
        **dialect.table_options(),
    )


def ddl_statements(dialect: SqlDialect, table: sa.Table) -> list[str]:
    """CREATE TABLE plus, where comments are separate statements, COMMENT ON ...; compiled."""
    sa_dialect = dialect.sa_dialect
    statements = [str(CreateTable(table).compile(dialect=sa_dialect)).strip()]
    if dialect.has_comments and not sa_dialect.inline_comments:
        if table.comment:
            statements.append(str(SetTableComment(table).compile(dialect=sa_dialect)))
        statements.extend(
            str(SetColumnComment(column).compile(dialect=sa_dialect))
            for column in table.columns
            if column.comment
        )
    return statements


def schema_to_json(columns: Sequence[ColumnSpec]) -> list[dict[str, Any]]:
    """What the state table remembers of the applied schema."""
    return [
        {
            "name": c.name,
            "type": c.type.declared,
            "not_null": c.not_null,
            "primary_key": c.primary_key,
            "format": c.format,
        }
        for c in columns
    ]


def added_columns(applied: Sequence[Mapping[str, Any]], incoming: Sequence[ColumnSpec]) -> list[ColumnSpec]:
    """New nullable columns of ``incoming`` over ``applied``; raise if the change is incompatible."""
    new = {c.name: c for c in incoming}
    old_names = [c["name"] for c in applied]
    dropped = [n for n in old_names if n not in new]
    if dropped:
        raise SchemaIncompatible(f"columns {dropped!r} were dropped from the schema; the local data is kept")
    for old in applied:
        column = new[old["name"]]
        if column.type.declared != old["type"] or column.format != old.get("format"):
            raise SchemaIncompatible(
                f"column {old['name']!r} changed from {old['type']} (format {old.get('format')!r}) "
                f"to {column.type.declared} (format {column.format!r})"
            )
        if column.primary_key != old["primary_key"]:
            raise SchemaIncompatible(f"the primary key changed at column {old['name']!r}")
        if column.not_null and not old["not_null"]:
            raise SchemaIncompatible(f"column {old['name']!r} became NOT NULL")
        if old["not_null"] and not column.not_null:
            raise SchemaIncompatible(f"column {old['name']!r} dropped its NOT NULL constraint")
    known = set(old_names)
    added = [c for c in incoming if c.name not in known]
    for column in added:
        if column.not_null or column.primary_key:
            raise SchemaIncompatible(
                f"new column {column.name!r} is NOT NULL or part of the key: existing rows have no value"
            )
    return added
