"""The table adapter reports the store's outcome truthfully: a revocation is never an 'applied'."""

from __future__ import annotations

import io
from typing import Any

import pytest

from agent.config import Database, TableTarget
from agent.scheduling import Schedule
from agent.stores import TableAdapter
from agent.subscription_list import SubscriptionEntry
from tests.tables_helpers import Source, staff_row


def _adapter(url: str, subscription: str) -> TableAdapter:
    target = TableTarget(subscription, "school", Database(url=url), "staff")
    return TableAdapter(target, SubscriptionEntry(subscription, "table", Schedule("realtime"), {}, None))


def _apply(adapter: TableAdapter, header: Any, payload: bytes) -> Any:
    return adapter.apply(header, io.BytesIO(payload))


def test_revoked_outcome_is_not_reported_as_applied(sqlite_url: str) -> None:
    source = Source()
    adapter = _adapter(sqlite_url, source.subscription)
    first = _apply(adapter, *source.snapshot([staff_row(i) for i in range(5)]))
    assert first.result == "applied" and first.rows_upserted == 5
    header, _ = source.snapshot([])
    header.kind = "revoke"
    revoked = _apply(adapter, header, b"")
    assert revoked.result == "skipped", revoked
    assert revoked.rows_upserted == 0 and revoked.rows_deleted == 0 and revoked.local_digest is None
    assert "revoked" in revoked.detail and "5 rows purged" in revoked.detail
    assert adapter.position().revoked


def test_an_unknown_store_outcome_is_never_reported_as_applied(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Source()
    adapter = _adapter(sqlite_url, source.subscription)
    real = adapter.store.apply

    def odd(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        result.status = "frobnicated"
        return result

    monkeypatch.setattr(adapter.store, "apply", odd)
    with pytest.raises(RuntimeError, match="frobnicated"):
        _apply(adapter, *source.snapshot([staff_row(1)]))
