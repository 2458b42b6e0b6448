"""The signed subscription list the platform writes into ``control/`` (kind ``subscriptions``).

Its payload is JSON: ``{"format": 1, "agent_id", "time", "subscriptions": [{"subscription",
"catalog": {...附件三 fields, "update_frequency", "update_cron"?, "provision_method"}, "schema",
"target", "provision_method"}]}`` (docs/hub.md). The agent keeps the last list that verified in
its state so ``status``/``verify`` work offline and a list that fails to verify never leaves
the agent without one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.scheduling import Schedule, ScheduleError
from protocol.errors import LayoutError, PackageError
from protocol.layout import validate_id


@dataclass(frozen=True)
class SubscriptionEntry:
    subscription_id: str
    provision_method: str  # table | file
    schedule: Schedule
    catalog: dict[str, Any]
    target_name: str | None  # the name the platform declares (table or directory), if any


def parse_subscription_list(payload: bytes, agent_id: str) -> dict[str, SubscriptionEntry]:
    """The signed list's JSON: ``{"subscriptions": [{"subscription_id", "catalog", ...}]}``."""
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise PackageError(f"subscription list is not JSON: {exc}") from None
    items = data.get("subscriptions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise PackageError("subscription list has no 'subscriptions' array")
    entries: dict[str, SubscriptionEntry] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise PackageError(f"subscription list item {i} is not an object")
        sub_id = item.get("subscription") or item.get("subscription_id") or item.get("id")
        catalog = item.get("catalog") if isinstance(item.get("catalog"), dict) else item
        if not isinstance(sub_id, str) or not isinstance(catalog, dict):
            raise PackageError(f"subscription list item {i}: missing subscription_id or catalog")
        try:
            validate_id(sub_id, "subscription id")  # it becomes part of file and directory names
        except LayoutError as exc:
            raise PackageError(f"subscription list item {i}: {exc}") from None
        method = catalog.get("provision_method") or item.get("provision_method")
        if method not in ("table", "file"):
            raise PackageError(f"subscription {sub_id}: provision_method {method!r} is not table or file")
        try:
            frequency = str(catalog.get("update_frequency") or item.get("update_frequency") or "")
            schedule = Schedule.parse(frequency, catalog.get("update_cron") or item.get("update_cron"))
        except ScheduleError as exc:
            raise PackageError(f"subscription {sub_id}: {exc}") from None
        target = item.get("target") or item.get("target_table") or item.get("target_name")
        entries[sub_id] = SubscriptionEntry(sub_id, method, schedule, catalog,
                                            target if isinstance(target, str) else None)
    return entries
