"""Bucket resends: a ``resend_buckets`` request answered with the rows of those digest buckets only.

Protocol (the signed ``replace_buckets`` header field), hub (who gets what, in which order) and
the agent's table store on real SQLite, PostgreSQL and MariaDB targets, end to end through
``edu-agent verify`` -> request -> ``edu-hub publish`` -> ``edu-agent run --once``.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agent.cli import main as agent_main
from connectors.stores.tables import PayloadMalformed, TableStore
from protocol import canonical
from protocol import digest as table_digest
from protocol.canonical import encode_record
from protocol.errors import HeaderFormatError, InvalidFieldError
from protocol.header import DIGEST_BUCKETS
from protocol.keys import init_keys
from protocol.layout import INBOX, package_filename, sorted_packages
from protocol.package import PackageWriter, open_package, read_header
from tests.tables_helpers import STAFF_SCHEMA, Header, Source, staff_row, stream, table_contents
from tests.test_e2e_local import Site, StaffSource, table_rows
from tests.test_hub_common import HubFixture, ReplayAgent, source_state, staff_table, subscription_text
from tests.test_hub_files import SUB as FILE_SUB
from tests.test_hub_reports import _send


def _bucket(*key_values: str) -> int:
    return table_digest.bucket_of(canonical.encode_values(list(key_values)).encode("utf-8"))


# ---------------------------------------------------------------- protocol


def test_header_module_agrees_with_the_digest_on_the_bucket_count() -> None:
    assert DIGEST_BUCKETS == table_digest.BUCKETS


def _writer(tmp_path: Path, **fields: Any) -> PackageWriter:
    platform = init_keys(tmp_path / "platform", "platform")
    agent = init_keys(tmp_path / "agent", "school-1")
    options: dict[str, Any] = {"kind": "delta", "sequence": 5, "builds_on": 4, **fields}
    return PackageWriter(
        tmp_path / "p.pkg",
        sender=platform,
        recipient=agent.public_bundle(),
        subscription="staff",
        **options,
    )


BAD_LISTS = [
    ([], "non-empty"),
    ([256], "not a digest bucket"),
    ([-1], "not a digest bucket"),
    (["3"], "not a digest bucket"),
    ([True], "not a digest bucket"),
    ([3, 3], "strictly ascending"),
    ([17, 3], "strictly ascending"),
    ("3", "non-empty list"),
]


@pytest.mark.parametrize(("buckets", "message"), BAD_LISTS)
def test_writer_refuses_a_bad_bucket_list(tmp_path: Path, buckets: Any, message: str) -> None:
    with pytest.raises(InvalidFieldError, match=message):
        _writer(tmp_path, replace_buckets=buckets)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "snapshot", "builds_on": None}, "only allowed on a delta"),
        ({"kind": "files"}, "only allowed on a delta"),
        ({"builds_on": None}, "needs builds_on"),
    ],
)
def test_replace_buckets_only_on_a_delta_that_builds_on_a_position(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidFieldError, match=message):
        _writer(tmp_path, replace_buckets=[3], **fields)


def test_a_valid_bucket_list_is_signed_and_read_back(tmp_path: Path) -> None:
    with _writer(tmp_path, replace_buckets=[3, 17, 255]) as writer:
        writer.write(b"")
    header = _read(tmp_path)
    assert header.replace_buckets == (3, 17, 255)
    assert header.to_dict()["replace_buckets"] == [3, 17, 255]


def test_headers_without_the_field_keep_their_bytes(tmp_path: Path) -> None:
    with _writer(tmp_path) as writer:
        writer.write(b"")
    header = _read(tmp_path)
    assert header.replace_buckets is None and "replace_buckets" not in header.to_dict()


def _read(tmp_path: Path) -> Any:
    from protocol.keys import load_keys

    platform, agent = load_keys(tmp_path / "platform"), load_keys(tmp_path / "agent")
    return read_header(
        tmp_path / "p.pkg", trusted_senders={"platform": platform.public_bundle()}, recipient=agent
    )


@pytest.mark.parametrize(
    ("buckets", "kind", "message"),
    [
        ([999], "delta", "replace_buckets: 999 is not a digest bucket"),
        ([4, 4], "delta", "strictly ascending"),
        ([], "delta", "non-empty"),
        ([1], "snapshot", "only allowed on a delta"),
    ],
)
def test_reader_rejects_a_signed_header_with_a_bad_bucket_list(
    tmp_path: Path, buckets: list[int], kind: str, message: str
) -> None:
    """A sender that skipped the writer's check (another implementation): refused at the header
    parse with a clear error — which the daemon quarantines like any HeaderFormatError."""
    from protocol.keys import load_keys

    writer = _writer(tmp_path, kind=kind, builds_on=4 if kind == "delta" else None)
    writer._fields["replace_buckets"] = buckets  # bypass the writer's own validation
    with writer:
        writer.write(b'U,"1"\n')
    platform, agent = load_keys(tmp_path / "platform"), load_keys(tmp_path / "agent")
    with pytest.raises(HeaderFormatError, match=message) as caught:
        open_package(
            tmp_path / "p.pkg", trusted_senders={"platform": platform.public_bundle()}, recipient=agent
        )
    assert "header field replace_buckets" in str(caught.value)


def test_the_bucket_resend_vector_names_its_buckets_and_holds_only_their_rows() -> None:
    from tests.vectors import generate

    vectors = Path(generate.__file__).resolve().parent
    header = json.loads((vectors / "v1-bucket-resend.header.json").read_bytes())
    assert header["kind"] == "delta" and header["builds_on"] == header["sequence"] - 1
    assert header["replace_buckets"] == generate.RESEND_BUCKETS
    rows = list(canonical.iter_records([(vectors / "v1-bucket-resend.plaintext").read_bytes()], 5))
    snapshot = list(canonical.iter_records([(vectors / "v1-snapshot.plaintext").read_bytes()], 5))
    named = set(header["replace_buckets"])
    in_buckets = [r.values for r in snapshot if r.op == "U" and _bucket(str(r.values[0])) in named]
    assert [r.values for r in rows] == in_buckets and {"7", "42"} <= {r.values[0] for r in rows}
    assert header["counts"]["rows_upserted"] == len(rows)


# ---------------------------------------------------------------- hub


def _rows(n: int, when: str) -> list[dict[str, object]]:
    return [
        {"ID": i, "XM": f"教师{i}", "SECRET": f"S-{i}", "STATUS": "active", "UPDATETIME": when}
        for i in range(1, n + 1)
    ]


def _request(request_id: str, request: str = "resend_buckets", buckets: Any = None) -> dict[str, Any]:
    return {
        "type": "request",
        "subscription_id": "staff",
        "request_id": request_id,
        "request": request,
        "buckets": buckets if buckets is not None else [],
        "files": [],
        "reason": "digest mismatch",
    }


def _published(
    tmp_path: Path, url: str, count: int, agents: list[str]
) -> tuple[HubFixture, sa.Engine, sa.Table, tuple[ReplayAgent, ReplayAgent]]:
    """A source of ``count`` rows published to school-1 and school-2 (other agents only registered)."""
    engine = sa.create_engine(url)
    table = staff_table(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), _rows(count, "2026-01-01 08:00:00"))
    hub = HubFixture(tmp_path, agents)
    hub.add_subscription(subscription_text(url, agents=("school-1", "school-2")))
    hub.publish()
    replays = ReplayAgent(hub, "school-1"), ReplayAgent(hub, "school-2")
    assert replays[0].catch_up() == 1 and replays[1].catch_up() == 1
    return hub, engine, table, replays


def test_hub_sends_the_named_buckets_to_the_requester_and_the_delta_to_all(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    agents = ["school-1", "school-2", "school-3"]
    hub, engine, table, (asking, quiet) = _published(tmp_path, db_url, 2000, agents)

    # the requester's copy went wrong in two buckets (an update, a delete); the hub cannot see that
    wrong = [_bucket("7"), _bucket("1234")]
    asking.rows[canonical.encode_values(["7"])] = ["7", "篡改", "2026-01-01 08:00:00"]
    del asking.rows[canonical.encode_values(["1234"])]
    _send(hub, "school-1", _request("r1", buckets=wrong), kind="request", seq=1)
    # school-3 is registered but does not receive the subscription: its request is ignored
    _send(hub, "school-3", _request("r9", buckets=[1]), kind="request", seq=1)
    with engine.begin() as conn:  # a normal change in the same publish
        conn.execute(
            table.update().where(table.c.ID == 99).values(XM="新名字", UPDATETIME="2026-01-02 08:00:00")
        )
    with caplog.at_level(logging.WARNING, logger="hub.publish"):
        hub.publish()
    assert any(
        "r9" in r.getMessage() and "school-3" in r.getMessage() and "no longer receives" in r.getMessage()
        for r in caplog.records
    )
    assert not list(hub.inbox("school-3").iterdir())

    assert asking.catch_up() == 2 and quiet.catch_up() == 1
    resend, delta = asking.headers[-2:]
    assert resend.kind == "delta" and resend.sequence == 2 and resend.builds_on == 1
    assert resend.replace_buckets == tuple(sorted(set(wrong)))
    in_buckets = [k for k in source_state(db_url) if table_digest.bucket_of(k.encode("utf-8")) in set(wrong)]
    assert resend.counts["rows_upserted"] == len(in_buckets) < 2000 // 20
    lines = asking.plaintexts[-2].decode("utf-8").splitlines()
    assert len(lines) == len(in_buckets) and all(line.startswith("U,") for line in lines)
    assert delta.replace_buckets is None and delta.sequence == 3 and delta.builds_on == 2
    assert quiet.headers[-1].sequence == 2 and quiet.headers[-1].replace_buckets is None
    assert asking.table() == quiet.table() == source_state(db_url)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hub.publish"):
        hub.publish()  # every request is honoured (or ignored) once
    assert not caplog.records
    assert asking.catch_up() == 0 and quiet.catch_up() == 0
    engine.dispose()


def test_resync_wins_and_a_request_without_usable_buckets_gets_a_snapshot(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub, engine, _table, (one, two) = _published(tmp_path, sqlite_url, 50, ["school-1", "school-2"])
    _send(hub, "school-1", _request("a1", buckets=[5]), kind="request", seq=1)
    _send(hub, "school-1", _request("a2", request="resync"), kind="request", seq=2)
    _send(hub, "school-2", _request("b1", buckets=[300, 2]), kind="request", seq=1)
    with caplog.at_level(logging.WARNING, logger="hub.publish"):
        hub.publish()
    assert any("b1" in r.getMessage() and "names nothing to resend" in r.getMessage() for r in caplog.records)
    assert one.catch_up() == 1 and one.headers[-1].kind == "snapshot"
    assert two.catch_up() == 1 and two.headers[-1].kind == "snapshot"
    engine.dispose()


# ---------------------------------------------------------------- end to end, each target database


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield Site(tmp_path)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _inbox_headers(site: Site) -> list[Any]:
    names, _foreign = sorted_packages(p.name for p in (site.exchange / INBOX).iterdir())
    trusted = {"platform": site.platform_keys.public_bundle()}
    return [
        read_header(site.exchange / INBOX / n.filename, trusted_senders=trusted, recipient=site.agent_keys)
        for n in names
    ]


def _table_site(site: Site, url: str, rows: int) -> StaffSource:
    """A staff table of ``rows`` rows published to the site's agent and applied into ``url``."""
    site.databases = {"main": url}
    site.write_config()
    source = StaffSource(site.root / "source.db")
    source.upsert(range(1, rows + 1))
    site.add_table_subscription("staff", source.path, "T_JZGJBXX")
    site.publish()
    assert site.run_once() == 0
    return source


def test_verify_mismatch_is_repaired_by_a_bucket_resend(site: Site, db_url: str) -> None:
    """Rows updated, deleted and inserted behind the agent's back in a few buckets: verify names
    exactly those buckets, the request reaches the hub, the next publish sends those buckets'
    rows only (next to this run's ordinary delta), the agent applies both and verifies clean."""
    source = _table_site(site, db_url, 3000)

    engine = sa.create_engine(db_url)
    target = sa.Table("T_JZGJBXX", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(target.update().where(target.c.GH == "T00100").values(XM="篡改"))
        conn.execute(target.delete().where(target.c.GH == "T00200"))
        conn.execute(
            target.insert().values(
                GH="X99999", XM="多出来", ZC=None, JBGZ=None, CSRQ=None, UPDATETIME="2026-01-01 00:00:00"
            )
        )
    engine.dispose()
    touched = {_bucket("T00100"), _bucket("T00200"), _bucket("X99999")}

    assert agent_main(["verify", "-c", str(site.config)]) != 0
    verified = [e for e in site.audit_events() if e["event"] == "verify.run"]
    assert set(verified[-1]["buckets"]) == touched
    assert site.run_once() == 0  # delivers the queued request
    request = next(d for d in site.outbox_documents() if d["type"] == "request")
    assert request["request"] == "resend_buckets" and set(request["buckets"]) == touched

    source.upsert(range(2990, 2996), title="教授")  # an ordinary change in the same publish
    site.publish()
    headers = _inbox_headers(site)
    resend = next(h for h in headers if h.replace_buckets)
    assert resend.replace_buckets == tuple(sorted(touched))
    in_buckets = [r for r in source.rows() if _bucket(r[0]) in touched]
    assert resend.counts["rows_upserted"] == len(in_buckets)
    assert 0 < len(in_buckets) < 3000 // 20  # far below the table
    follows = [h for h in headers if h.sequence == resend.sequence + 1]
    assert follows and follows[0].kind == "delta" and follows[0].counts["rows_upserted"] == 6

    assert site.run_once() == 0
    assert agent_main(["verify", "-c", str(site.config)]) == 0
    assert table_rows(db_url, "T_JZGJBXX") == source.rows()
    receipts = {d["sequence"]: d for d in site.outbox_documents() if d["type"] == "apply_receipt"}
    assert receipts[resend.sequence]["digest_match"] is True
    assert receipts[resend.sequence]["rows_upserted"] == len(in_buckets)
    assert receipts[resend.sequence + 1]["digest_match"] is True
    assert site.status()["subscriptions"][0]["digest_match"] is True


# ---------------------------------------------------------------- the table store alone, each database


@dataclass
class BucketHeader(Header):
    replace_buckets: tuple[int, ...] | None = None


TABLE = "教职工基本信息"


@pytest.fixture
def store(db_url: str) -> Iterator[TableStore]:
    result = TableStore(db_url)
    yield result
    result.close()


def _bucket_package(source: Source, buckets: set[int], rows: list[list[str | None]] | None = None) -> Any:
    """What the hub sends for ``buckets``: every source row of those buckets, as upserts."""
    chosen = rows if rows is not None else [r for r in source.rows.values() if _bucket(str(r[0])) in buckets]
    source.sequence += 1
    header = BucketHeader(
        "delta",
        f"pkg-{source.sequence}",
        source.subscription,
        source.sequence,
        source.sequence - 1,
        source.schema,
        replace_buckets=tuple(sorted(buckets)),
    )
    header.expected_state = source.expected()
    return header, b"".join(encode_record("U", r) for r in chosen), len(chosen)


def _tamper(url: str, sql: str) -> None:
    engine = sa.create_engine(url)
    q = engine.dialect.identifier_preparer.quote_identifier
    with engine.begin() as conn:
        conn.exec_driver_sql(sql.format(t=q(TABLE), gh=q("GH"), bz=q("BZ"), xm=q("XM"), up=q("UPDATETIME")))
    engine.dispose()


def test_store_replaces_exactly_the_named_buckets(store: TableStore, db_url: str) -> None:
    source = Source()
    header, payload = source.snapshot([staff_row(i) for i in range(1500)])
    store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
    _tamper(db_url, "UPDATE {t} SET {bz} = 'changed behind the agent' WHERE {gh} = 'T000017'")
    _tamper(db_url, "DELETE FROM {t} WHERE {gh} = 'T000042'")
    _tamper(db_url, "INSERT INTO {t} ({gh}, {xm}, {up}) VALUES ('X1', '入侵', '2026-01-01 00:00:00')")
    touched = {_bucket(k) for k in ("T000017", "T000042", "X1")}
    assert set(store.verify(source.subscription).mismatched_buckets) == touched

    header, payload, count = _bucket_package(source, touched)
    assert 0 < count < 1500 // 20
    result = store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
    assert result.applied and result.match is True and result.mismatched_buckets == []
    assert result.rows_upserted == count and result.rows_deleted == 1 and result.rows == 1500
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()
    verified = store.verify(source.subscription)
    assert verified.match and verified.matches_expected
    position = store.position(source.subscription)
    assert position is not None and position.sequence == 2 and position.digest == source.expected()

    # the digest of the other buckets is the recorded one: a later delta still verifies
    header, payload = source.delta(upserts=[staff_row(7, variant=3)], deletes=[("T000100",)])
    assert store.apply(header, stream(payload), TABLE).match is True  # type: ignore[arg-type]
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == source.canonical_set()


def test_store_rejects_a_bucket_package_with_rows_of_other_buckets(store: TableStore, db_url: str) -> None:
    source = Source()
    header, payload = source.snapshot([staff_row(i) for i in range(300)])
    store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
    before = table_contents(db_url, TABLE, STAFF_SCHEMA)
    named = _bucket("T000005")
    stray = next(r for r in source.rows.values() if _bucket(str(r[0])) != named)
    header, payload, _count = _bucket_package(source, {named}, rows=[staff_row(5, variant=1), stray])
    with pytest.raises(PayloadMalformed, match="not one of the buckets the header replaces"):
        store.apply(header, stream(payload), TABLE)  # type: ignore[arg-type]
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == before  # nothing applied
    position = store.position(source.subscription)
    assert position is not None and position.sequence == 1

    deleting = encode_record("D", ["T000005"] + [None] * (len(STAFF_SCHEMA) - 1))
    header.package_id = "pkg-again"
    with pytest.raises(PayloadMalformed, match="only upserts"):
        store.apply(header, stream(deleting), TABLE)  # type: ignore[arg-type]
    assert table_contents(db_url, TABLE, STAFF_SCHEMA) == before


# ---------------------------------------------------------------- file subscriptions: the named files only


def _file_bucket(path: str) -> int:
    return table_digest.bucket_of(table_digest.file_item(path, 0, "")[0])


def _files_packages(hub_root: Path, agent: str, keys: Any, platform: Any) -> list[tuple[Any, bytes]]:
    inbox = hub_root / "exchange" / agent / INBOX
    names, _foreign = sorted_packages(p.name for p in inbox.iterdir())
    out = []
    for name in names:
        with open_package(
            inbox / name.filename, trusted_senders={"platform": platform.public_bundle()}, recipient=keys
        ) as pkg:
            out.append((pkg.header, b"".join(pkg.iter_plaintext())))
    return out


def test_verify_drift_in_a_share_is_repaired_by_resending_the_named_files_only(site: Site) -> None:
    source = site.root / "source-files"
    for i in range(60):
        path = source / f"课程/{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"第{i}章\n", encoding="utf-8")
    site.add_file_subscription("course-files", source)
    site.publish()
    assert site.run_once() == 0
    target = site.share / "course-files"
    (target / "课程/007.txt").write_text("tampered\n", encoding="utf-8")  # behind the agent's back
    (target / "课程/031.txt").unlink()
    assert agent_main(["verify", "-c", str(site.config)]) != 0
    assert site.run_once() == 0  # delivers the request
    request = next(d for d in site.outbox_documents() if d["type"] == "request")
    assert request["request"] == "resend_files"
    assert sorted(request["files"]) == ["课程/007.txt", "课程/031.txt"]

    (source / "课程/050.txt").write_text("第50章 修订\n", encoding="utf-8")  # an ordinary change too
    site.publish()
    packages = _files_packages(site.hub, site.agent, site.agent_keys, site.platform_keys)
    (delta, _), (resend, payload) = packages[-2:]
    assert [e["path"] for e in delta.manifest["entries"]] == ["课程/050.txt"]
    assert [e["path"] for e in resend.manifest["entries"]] == ["课程/007.txt", "课程/031.txt"]
    assert resend.manifest["removed"] == [] and resend.sequence == delta.sequence + 1
    assert (
        resend.manifest["base_digest"]
        == resend.manifest["expected_digest"]
        == delta.manifest["expected_digest"]
    )
    assert payload == "第7章\n第31章\n".encode()

    assert site.run_once() == 0
    assert agent_main(["verify", "-c", str(site.config)]) == 0
    assert {p.relative_to(target) for p in target.rglob("*.txt")} == {
        p.relative_to(source) for p in source.rglob("*.txt")
    }
    assert all((target / p.relative_to(source)).read_bytes() == p.read_bytes() for p in source.rglob("*.txt"))
    receipts = [d for d in site.outbox_documents() if d["type"] == "apply_receipt"]
    assert [r["digest_match"] for r in receipts[-2:]] == [True, True]


def test_file_bucket_request_resends_the_published_files_of_those_buckets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):
        (src / f"{i:03d}.pdf").write_bytes(b"%PDF " + str(i).encode())
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(FILE_SUB.format(directory=src))  # subscriber school-1
    hub.publish()
    keys = hub.agent_keys["school-1"]
    buckets = sorted({_file_bucket("010.pdf"), _file_bucket("200.pdf")})
    request = {**_request("f1", buckets=buckets), "subscription_id": "docs", "files": ["010.pdf"]}
    _send(hub, "school-1", request, kind="request", seq=1)
    hub.publish()
    header, payload = _files_packages(hub.root, "school-1", keys, hub.platform)[-1]
    expected = sorted(f"{i:03d}.pdf" for i in range(300) if _file_bucket(f"{i:03d}.pdf") in buckets)
    assert [e["path"] for e in header.manifest["entries"]] == expected and len(expected) < 300 // 20
    assert payload == b"".join((src / p).read_bytes() for p in expected)

    # a file the platform does not publish cannot be removed safely by a delta: a snapshot instead
    _send(hub, "school-1", {**request, "request_id": "f2", "files": ["gone.pdf"]}, kind="request", seq=2)
    with caplog.at_level(logging.WARNING, logger="hub.publish"):
        hub.publish()
    assert any("does not publish" in r.getMessage() for r in caplog.records)
    header, _payload = _files_packages(hub.root, "school-1", keys, hub.platform)[-1]
    assert header.manifest["base_digest"] is None and len(header.manifest["entries"]) == 300


def test_agent_quarantines_a_signed_bucket_resend_with_a_bad_bucket_list(site: Site) -> None:
    """The platform's own key, a well-formed payload, but ``replace_buckets: [300]``: the daemon
    rejects it at the header (never half-applied), quarantines it with the reason, and reports it."""
    _table_site(site, f"sqlite:///{site.root / 'target.db'}", 50)
    before = table_rows(site.databases["main"], "T_JZGJBXX")
    snapshot = _inbox_headers(site)[0]
    name = package_filename("staff", 2, "cd" * 16)
    writer = PackageWriter(
        site.exchange / INBOX / name,
        kind="delta",
        sender=site.platform_keys,
        recipient=site.agent_keys.public_bundle(),
        subscription="staff",
        sequence=2,
        builds_on=1,
        package_id="cd" * 16,
        catalog=dict(snapshot.catalog),
        schema=list(snapshot.schema),
        expected_state=snapshot.expected_state,
    )
    writer._fields["replace_buckets"] = [300]  # what the writer itself refuses
    with writer:
        writer.write(b"")
    assert site.run_once() == 1
    reason = json.loads((site.state / "quarantine" / (name + ".reason")).read_text())
    assert "replace_buckets: 300 is not a digest bucket" in reason["reason"]
    assert table_rows(site.databases["main"], "T_JZGJBXX") == before
    rejected = [
        d for d in site.outbox_documents() if d["type"] == "apply_receipt" and d["result"] == "rejected"
    ]
    assert rejected and rejected[0]["sequence"] == 2
