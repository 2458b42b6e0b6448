"""Subscription files: every 附件三 field validated, errors naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.catalog import CatalogError, parse_subscription
from hub.cli import main as hub_main
from hub.files import glob_regex, selected
from protocol.canonical import parse_type
from tests.test_hub_common import HubFixture, subscription_text

GOOD = subscription_text("sqlite:///x.db")


def _error(text: str) -> str:
    with pytest.raises(CatalogError) as info:
        parse_subscription(text, "sub.yaml")
    return str(info.value)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_private_directories(tmp_path: Path) -> None:
    hub = HubFixture(tmp_path, ["school-1"])
    for name in ("state", "spool", "keys"):
        assert (hub.root / name).stat().st_mode & 0o077 == 0, name


def test_good_file_parses() -> None:
    sub = parse_subscription(GOOD, "sub.yaml")
    assert sub.catalog.sharing_type == "authorised" and sub.catalog.agreement is not None
    assert sub.key_columns == ["ID"] and sub.table_source.cursor == "UPDATETIME"
    fields = sub.catalog.header_fields()
    assert fields["agreement_id"] == "XY-2026-001" and fields["update_frequency"] == "每天"


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        (
            "resource_name: 人事处数据-教职工基本信息",
            "resource_name: 教职工基本信息",
            "catalog.resource_name",
            "机构名称-数据基本信息",
        ),
        (
            "mounted_resource_name: 人事处数据-教职工基本信息表",
            "mounted_resource_name: -表",
            "catalog.mounted_resource_name",
            "机构名称-数据基本信息",
        ),
        ("sharing_type: authorised", "sharing_type: public", "catalog.sharing_type", "unconditional"),
        (
            "  agreement: {id: XY-2026-001, valid_from: 2026-01-01, valid_until: 2027-12-31}\n",
            "",
            "catalog",
            "needs an agreement",
        ),
        ("valid_until: 2027-12-31", "valid_until: 2025-12-31", "catalog.agreement", "before valid_from"),
        ("update_frequency: 每天", "update_frequency: 每年", "catalog.update_frequency.value", "每天"),
        (
            "update_frequency: 每天",
            "update_frequency: {value: 自定义, cron: 'not cron'}",
            "catalog.update_frequency",
            "cron",
        ),
        (
            "update_frequency: 每天",
            "update_frequency: {value: 每天, cron: '0 2 * * *'}",
            "catalog.update_frequency",
            "only allowed with 自定义",
        ),
        ("provision_method: table", "provision_method: interface", "catalog.provision_method", "'table'"),
        ("  topic: 教师主题库\n", "", "catalog.topic", "Field required"),
        ("  scope: 高校", "  scope: ''", "catalog.scope", "at least 1 character"),
        ("type: VARCHAR2(50)}", "type: VARCHAR9(50)}", "dictionary.1.type", "unknown declared type"),
        # the agent's protocol.canonical has no TIME: a package carrying it would be quarantined
        ("type: VARCHAR2(50)}", "type: TIME}", "dictionary.1.type", "unknown declared type 'TIME'"),
        ("type: VARCHAR2(50)}", "type: VARCHAR2(0)}", "dictionary.1.type", "VARCHAR2(0)"),
        ("type: VARCHAR2(50)}", "type: TIMESTAMP WITH ZONE}", "dictionary.1.type", "TIMESTAMP WITH ZONE"),
        ('op: "=", value: active', 'op: "=", values: [a]', "source.filter.0", "exactly one 'value'"),
        ('op: "="', "op: drop", "source.filter.0.op", "'='"),
        ("  - agent: school-1", "  - agent: School 1", "subscribers.0.agent", "pattern"),
    ],
)
def test_errors_name_file_line_and_field(old: str, new: str, field: str, message: str) -> None:
    assert old in GOOD, old
    text = GOOD.replace(old, new)
    error = _error(text)
    assert f"{field}:" in error, error
    assert message in error, error
    assert error.startswith("sub.yaml:"), error
    line = _line_of(text, new.strip() or "catalog:")
    assert any(part.startswith(f"sub.yaml:{line}:") for part in error.splitlines()), (line, error)


@pytest.mark.parametrize(
    ("written", "header"),
    [
        ("TIMESTAMP WITH TIME ZONE", "TIMESTAMP WITH TIME ZONE"),
        ("timestamp(3)  with  local time zone", "TIMESTAMP(3) WITH LOCAL TIME ZONE"),
        ("varchar2(50 char)", "VARCHAR2(50 CHAR)"),
        ("NUMBER(10,2)", "NUMBER(10,2)"),
    ],
)
def test_declared_type_reaches_the_header_as_the_agent_reads_it(written: str, header: str) -> None:
    """The hub keeps the provider's spelling (normalised only as protocol.canonical does)."""
    sub = parse_subscription(GOOD.replace("type: VARCHAR2(50)}", f"type: '{written}'}}"), "sub.yaml")
    declared = sub.dictionary_json()[1]["type"]
    assert declared == header
    assert parse_type(declared).declared == header  # what every agent applies


def test_subscription_add_refuses_a_type_the_agent_cannot_apply(tmp_path: Path, capsys: Any) -> None:
    hub = HubFixture(tmp_path, ["school-1"])
    bad = tmp_path / "time.yaml"
    text = GOOD.replace("type: VARCHAR2(50)}", "type: TIME}")
    bad.write_text(text, encoding="utf-8")
    assert hub_main(["subscription", "add", str(hub.root), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:{_line_of(text, 'type: TIME}')}: dictionary.1.type: " in err, err
    assert not (hub.root / "exchange/school-1/control").exists() or not any(
        (hub.root / "exchange/school-1/control").glob("subscriptions.*")
    )


def test_structural_errors() -> None:
    assert "not valid YAML" in _error("id: [unclosed")
    assert "duplicate key 'id'" in _error("id: a\nid: b\n")
    assert "one mapping" in _error("- a\n- b\n")
    assert "cursor column 'NOPE'" in _error(GOOD.replace("  filter:", "  cursor: NOPE\n  filter:"))
    assert "no primary key" in _error(GOOD.replace("primary_key: true", "primary_key: false"))
    two = GOOD.replace("  - agent: school-1", "  - agent: school-1\n  - agent: school-1")
    assert "listed twice" in _error(two)


def test_cli_registry_commands(tmp_path: Path, capsys: Any) -> None:
    hub = HubFixture(tmp_path, ["school-1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("每天", "每年"), encoding="utf-8")
    assert hub_main(["subscription", "add", str(hub.root), "--file", str(bad)]) == 2
    assert f"{bad}:" in capsys.readouterr().err
    unknown = subscription_text("sqlite:///x.db", agents=("ghost",))
    (tmp_path / "u.yaml").write_text(unknown, encoding="utf-8")
    assert hub_main(["subscription", "add", str(hub.root), "--file", str(tmp_path / "u.yaml")]) == 2
    assert "'ghost' is not registered" in capsys.readouterr().err
    hub.add_subscription(GOOD)
    assert sorted(p.name.split(".")[0] for p in (hub.root / "exchange/school-1/control").iterdir()) == [
        "platform",
        "subscriptions",
    ]
    capsys.readouterr()
    assert hub_main(["subscription", "list", str(hub.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "staff"
    assert hub_main(["subscription", "show", str(hub.root), "staff"]) == 0
    assert json.loads(capsys.readouterr().out)["catalog"]["topic"] == "教师主题库"
    assert hub_main(["agent", "list", str(hub.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "school-1"
    assert hub_main(["agent", "remove", str(hub.root), "--id", "school-1"]) == 1
    assert "still subscribes to staff" in capsys.readouterr().err
    assert hub_main(["sftp-config", str(hub.root)]) == 0
    assert "Match User edu-school-1" in capsys.readouterr().out
    assert hub_main(["subscription", "show", str(hub.root), "nope"]) == 1
    bundle = tmp_path / "school-1.json"
    assert hub_main(["agent", "add", str(hub.root), "--id", "other", "--keys", str(bundle)]) == 1
    assert "is the bundle of 'school-1'" in capsys.readouterr().err


def test_subscription_list_is_signed_for_the_agent(tmp_path: Path) -> None:
    from protocol.layout import sorted_packages
    from protocol.package import open_package

    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(GOOD)
    control = hub.root / "exchange/school-1/control"
    (name,), _ = sorted_packages(p.name for p in control.iterdir())
    trusted = {"platform": hub.platform.public_bundle()}
    with open_package(
        control / name.filename, trusted_senders=trusted, recipient=hub.agent_keys["school-1"]
    ) as pkg:
        assert pkg.header.kind == "subscriptions"
        body = json.loads(b"".join(pkg.iter_plaintext()))
    (entry,) = body["subscriptions"]
    assert entry["subscription"] == "staff" and entry["target"] == "T_STAFF"
    assert entry["catalog"]["provision_method"] == "table" and entry["schema"][0]["name"] == "ID"


@given(st.text(alphabet="ab/.", max_size=12))
def test_glob_star_never_crosses_a_directory(path: str) -> None:
    assert bool(glob_regex("*").match(path)) == ("/" not in path)
    assert bool(glob_regex("**").match(path))
    assert selected(path, ["**"], ["**"]) is False


def test_dropped_subscriber_gets_a_new_list(tmp_path: Path) -> None:
    from protocol.layout import sorted_packages
    from protocol.package import open_package

    hub = HubFixture(tmp_path, ["school-1", "school-2"])
    hub.add_subscription(subscription_text("sqlite:///x.db", agents=("school-1", "school-2")))
    hub.add_subscription(subscription_text("sqlite:///x.db", agents=("school-1",)))
    control = hub.root / "exchange/school-2/control"
    names, _ = sorted_packages(p.name for p in control.iterdir())
    assert [n.sequence for n in names] == [1, 2]
    trusted = {"platform": hub.platform.public_bundle()}
    path = control / names[-1].filename
    with open_package(path, trusted_senders=trusted, recipient=hub.agent_keys["school-2"]) as pkg:
        assert json.loads(b"".join(pkg.iter_plaintext()))["subscriptions"] == []


def test_agent_add_with_ssh_key(tmp_path: Path) -> None:
    import subprocess

    from protocol.keys import init_keys

    hub = HubFixture(tmp_path, [])
    keys = init_keys(tmp_path / "k", "school-9")
    (tmp_path / "b.json").write_text(keys.public_bundle().to_json())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    args = ["agent", "add", str(hub.root), "--id", "school-9", "--keys", str(tmp_path / "b.json")]
    assert hub_main([*args, "--ssh-key", str(tmp_path / "id.pub")]) == 0
    installed = hub.root / "sshd" / "authorized_keys" / "edu-school-9"
    assert installed.read_text() == (tmp_path / "id.pub").read_text().strip() + "\n"
    assert installed.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (hub.root / "exchange" / "school-9").iterdir()) == [
        "control",
        "inbox",
        "outbox",
    ]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id2")], check=True)
    assert hub_main([*args, "--ssh-key", str(tmp_path / "id2.pub")]) == 1  # registered twice
    assert installed.read_text() == (tmp_path / "id.pub").read_text().strip() + "\n"  # key untouched
    assert hub_main(["agent", "remove", str(hub.root), "--id", "school-9"]) == 0
    assert not installed.exists()  # a removed agent can no longer log in


def test_an_agent_pinned_to_the_v1_suite_gets_v1_packages(tmp_path: Path, capsys: Any) -> None:
    """Packages for an agent that predates the BLAKE3 suite keep SUITE_V1; the others get the default."""
    import sqlite3

    from hub.registry import Registry, RegistryError
    from protocol.layout import sorted_packages
    from protocol.package import DEFAULT_SUITE, SUITE_V1, read_header

    hub = HubFixture(tmp_path, ["school-1", "school-2"])
    db = sqlite3.connect(hub.root / "hub.db", isolation_level=None)  # a hub from before per-agent suites
    db.execute("DROP TABLE agent_suites")
    db.close()
    capsys.readouterr()
    assert hub_main(["agent", "suite", str(hub.root), "--id", "school-1", "--suite", SUITE_V1]) == 0
    assert hub_main(["agent", "suite", str(hub.root), "--id", "school-2"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"school-1\t{SUITE_V1}", f"school-2\t{DEFAULT_SUITE}"]
    assert hub_main(["agent", "suite", str(hub.root), "--id", "ghost", "--suite", SUITE_V1]) == 1

    def suites(agent: str) -> list[str]:
        control = hub.root / "exchange" / agent / "control"
        names, _ = sorted_packages(p.name for p in control.iterdir())
        trusted = {"platform": hub.platform.public_bundle()}
        return [read_header(control / n.filename, trusted_senders=trusted).suite for n in names]

    agents = ("school-1", "school-2")
    hub.add_subscription(subscription_text("sqlite:///x.db", agents=agents))
    assert (suites("school-1"), suites("school-2")) == ([SUITE_V1], [DEFAULT_SUITE])
    assert hub_main(["agent", "suite", str(hub.root), "--id", "school-1", "--suite", DEFAULT_SUITE]) == 0
    hub.add_subscription(subscription_text("sqlite:///x.db", sub_id="staff2", agents=agents))
    assert suites("school-1") == [SUITE_V1, DEFAULT_SUITE]
    registry = Registry(hub.root)
    with pytest.raises(RegistryError, match="is not one of"):
        registry.set_agent_suite("school-1", "sm2-sm4gcm-sm3-zstd")
    assert registry.db.execute("SELECT count(*) FROM agent_suites").fetchone() == (0,)
    registry.close()
