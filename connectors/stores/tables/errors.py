"""Errors of the table store.

Two families, because the caller must treat them differently:

* :class:`PackageRejected` — the package must not be applied (a row breaks the schema, the
  payload is malformed, the schema change is incompatible, the subscription was revoked).
  Nothing was changed; the caller quarantines the package and reports the message.
  :class:`SchemaIncompatible` additionally means: stop this subscription until an operator
  or a new agreement resolves it.
* :class:`TableEnvironmentError` — the package may be fine but the database cannot take it
  now; nothing was lost, report and retry later. Driver errors (database down) propagate
  as SQLAlchemy's own ``OperationalError`` for the same treatment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TableStoreError(Exception):
    """Base of every table-store error."""


class PackageRejected(TableStoreError):
    """The package must not be applied: quarantine and report it."""


class UnsupportedPackage(PackageRejected):
    """Wrong kind, missing schema, or a header field the store cannot use."""


class PayloadMalformed(PackageRejected):
    """The plaintext is not the documented CSV (bad quoting, field count, operation, duplicate key)."""


class RowRejected(PackageRejected):
    """A row breaks the declared schema; names the row's key and the column."""

    def __init__(
        self, key: Sequence[str | None], column: str, reason: str, *, line: int | None = None
    ) -> None:
        self.key = list(key)
        self.column = column
        self.reason = reason
        self.line = line
        where = f" (payload line {line})" if line is not None else ""
        super().__init__(f"row with key {self.key!r}{where}, column {column!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # raised in row-check worker processes and re-raised in the store: must pickle
        return (_row_rejected, (self.key, self.column, self.reason, self.line))


class SchemaIncompatible(PackageRejected):
    """The header's schema cannot be applied to the existing table without altering or losing data."""


class DigestMismatch(PackageRejected):
    """A snapshot's rows do not hash to the digest its own signed header announces."""

    def __init__(self, message: str, buckets: Sequence[int]) -> None:
        self.buckets = list(buckets)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DigestMismatch, (self.args[0], self.buckets))


class SubscriptionRevoked(PackageRejected):
    """The subscription was revoked and purged here; nothing more is applied to it."""


class InvalidName(PackageRejected):
    """A table or column name cannot be used safely as an identifier."""


class TableEnvironmentError(TableStoreError):
    """The target database cannot take the package now (report and retry)."""


class UnsupportedDatabase(TableEnvironmentError):
    """The SQLAlchemy URL names a database the store has no dialect for."""


def _row_rejected(key: Sequence[str | None], column: str, reason: str, line: int | None) -> RowRejected:
    return RowRejected(key, column, reason, line=line)
