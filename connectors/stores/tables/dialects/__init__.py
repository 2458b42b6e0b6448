"""One :class:`SqlDialect` per database; :func:`dialect_for` picks it from a SQLAlchemy dialect."""

from __future__ import annotations

from sqlalchemy.engine import Dialect

from connectors.stores.tables.dialects.base import (
    Batch,
    CanonicalText,
    DeltaApplier,
    SnapshotLoader,
    SqlDialect,
    StoredRows,
    drain,
)
from connectors.stores.tables.errors import UnsupportedDatabase

__all__ = [
    "Batch",
    "CanonicalText",
    "DeltaApplier",
    "SnapshotLoader",
    "SqlDialect",
    "StoredRows",
    "dialect_for",
    "drain",
]


def dialect_for(sa_dialect: Dialect) -> SqlDialect:
    """The store dialect for a SQLAlchemy dialect (Kingbase uses PostgreSQL's; MariaDB MySQL's)."""
    from connectors.stores.tables.dialects.mysql import MySQLDialect
    from connectors.stores.tables.dialects.oracle import DMDialect, OracleDialect
    from connectors.stores.tables.dialects.postgresql import PostgreSQLDialect
    from connectors.stores.tables.dialects.sqlite import SQLiteDialect

    classes: dict[str, type[SqlDialect]] = {
        "sqlite": SQLiteDialect,
        "postgresql": PostgreSQLDialect,
        "mysql": MySQLDialect,
        "mariadb": MySQLDialect,
        "oracle": OracleDialect,
        "dm": DMDialect,
    }
    try:
        return classes[sa_dialect.name](sa_dialect)
    except KeyError:
        raise UnsupportedDatabase(f"no table store dialect for database {sa_dialect.name!r}") from None
