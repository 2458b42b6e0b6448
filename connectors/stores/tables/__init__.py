"""Table subscriptions: apply table packages into a local database (see docs/tables.md)."""

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
from connectors.stores.tables.store import (
    ApplyResult,
    Position,
    PurgeResult,
    TableHeader,
    TableStore,
    VerifyResult,
)

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
