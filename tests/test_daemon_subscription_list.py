"""Parsing the signed subscription list (its signature is checked before, by the package reader)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.scheduling import Schedule
from agent.subscription_list import parse_subscription_list
from protocol.errors import PackageError


def _item(**catalog: Any) -> dict[str, Any]:
    base = {"provision_method": "table", "update_frequency": "每天",
            "resource_name": "人事处数据-教职工基本信息"}
    return {"subscription": "staff", "catalog": {**base, **catalog}, "schema": [], "target": "T_STAFF",
            "provision_method": base["provision_method"]}


def _doc(*items: dict[str, Any]) -> bytes:
    return json.dumps({"format": 1, "agent_id": "school-1", "subscriptions": list(items)},
                      ensure_ascii=False).encode()


def test_hub_shape_parses() -> None:
    files = {**_item(provision_method="file", update_frequency="自定义", update_cron="*/5 * * * *"),
             "subscription": "docs", "target": None}
    entries = parse_subscription_list(_doc(_item(), files), "school-1")
    assert entries["staff"].provision_method == "table"
    assert entries["staff"].schedule == Schedule.parse("每天")
    assert entries["staff"].target_name == "T_STAFF"
    assert entries["docs"].schedule == Schedule("custom", "*/5 * * * *")
    assert entries["docs"].target_name is None
    assert entries["staff"].catalog["resource_name"] == "人事处数据-教职工基本信息"


@pytest.mark.parametrize(("payload", "message"), [
    (b"not json", "not JSON"),
    (json.dumps({"subscriptions": {}}).encode(), "no 'subscriptions' array"),
    (_doc("x"), "item 0 is not an object"),  # type: ignore[arg-type]
    (_doc({"catalog": {}}), "missing subscription_id"),
    (_doc({**_item(), "subscription": "../etc"}), "invalid subscription id"),
    (_doc(_item(provision_method="interface")), "provision_method 'interface'"),
    (_doc(_item(update_frequency="每年")), "unknown update frequency"),
    (_doc(_item(update_frequency="自定义")), "needs a cron expression"),
    (_doc(_item(update_frequency="自定义", update_cron="99 * * * *")), "invalid cron"),
])
def test_bad_lists_are_refused_with_a_specific_message(payload: bytes, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        parse_subscription_list(payload, "school-1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"subscriptions": st.lists(json_values, max_size=3)})))
def test_any_json_is_parsed_or_refused_cleanly(value: Any) -> None:
    try:
        entries = parse_subscription_list(json.dumps(value).encode(), "school-1")
    except PackageError:
        return
    for entry in entries.values():
        assert entry.provision_method in ("table", "file")
