"""Table subscriptions: apply table packages into a local database (see docs/tables.md)."""

from typing import TYPE_CHECKING, Any

from connectors.stores.tables.errors import (
    DigestMismatch,
    InvalidName,
    PackageRejected,
    PayloadMalformed,
    RowRejected,
    SchemaIncompatible,
    SubscriptionRevoked,
    TableEnvironmentError,
    TableStoreError,
    UnsupportedDatabase,
    UnsupportedPackage,
)

if TYPE_CHECKING:
    from connectors.stores.tables.store import (
        ApplyResult,
        Position,
        PurgeResult,
        TableHeader,
        TableStore,
        VerifyResult,
    )

_STORE_NAMES = frozenset(
    {"ApplyResult", "Position", "PurgeResult", "TableHeader", "TableStore", "VerifyResult"}
)


def __getattr__(name: str) -> Any:
    """The store (and SQLAlchemy with it) loads on first use: row-check worker processes import
    this package for ``rowcheck`` alone and stay small (docs/tables.md, "Row checks")."""
    if name in _STORE_NAMES:
        from connectors.stores.tables import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApplyResult",
    "DigestMismatch",
    "InvalidName",
    "PackageRejected",
    "PayloadMalformed",
    "Position",
    "PurgeResult",
    "RowRejected",
    "SchemaIncompatible",
    "SubscriptionRevoked",
    "TableEnvironmentError",
    "TableHeader",
    "TableStore",
    "TableStoreError",
    "UnsupportedDatabase",
    "UnsupportedPackage",
    "VerifyResult",
]
