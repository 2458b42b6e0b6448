"""End to end on one machine: the reference hub and `edu-agent run --once` over the local transport.

Everything is real — hub CLI, signed packages, the share store, the agent's state, audit
and reports — only the transport is a directory (the SFTP variant is tests/test_e2e_sftp.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.audit import verify as verify_audit
from agent.cli import main as agent_main
from hub.cli import main as hub_main
from hub.reports import collect
from protocol.keys import PartyKeys, init_keys, load_keys
from protocol.layout import INBOX, package_filename
from protocol.package import PackageWriter

FILE_SUBSCRIPTION = """
id: {sub_id}
catalog:
  provider: 教务处
  resource_name: 教务处数据-课程资料信息
  mounted_resource_name: 教务处数据-课程资料信息表
  summary: 课程资料文件
  data_name: 课程资料
  data_format: 文件
  sharing_type: unconditional
  security_level: 二级
  update_frequency: {frequency}
  provision_method: file
  time_range: 2020年至今
  topic: 教学主题库
  scope: 高校
source:
  directory: "{directory}"
subscribers:
  - agent: {agent}
"""

TABLE_SUBSCRIPTION = """
id: {sub_id}
catalog:
  provider: 人事处
  resource_name: 人事处数据-教职工基本信息
  mounted_resource_name: 人事处数据-教职工基本信息表
  summary: 教职工基本信息
  data_name: 教职工基本信息
  data_format: 库表
  sharing_type: authorised
  agreement: {{id: XY-2026-001, valid_from: 2026-01-01, valid_until: 2027-12-31}}
  security_level: 三级
  update_frequency: 每天
  provision_method: table
  time_range: 1998年至今
  topic: 教师主题库
  scope: 高校
dictionary:
  - {{name: GH, label: 工号, meaning: 教职工工号, type: VARCHAR2(20), not_null: true, primary_key: true}}
  - {{name: XM, label: 姓名, meaning: 姓名, type: VARCHAR2(50), not_null: true}}
  - {{name: ZC, label: 职称, meaning: 职称, type: VARCHAR2(50)}}
  - {{name: JBGZ, label: 基本工资, meaning: 基本工资, type: "NUMBER(10,2)"}}
  - {{name: CSRQ, label: 出生日期, meaning: 出生日期, type: DATE, format: YYYY-MM-DD}}
  - {{name: UPDATETIME, label: 更新时间, meaning: 最近一次更新的时间, type: VARCHAR2(50), not_null: true,
     format: "YYYY-MM-DD HH:MM:SS"}}
source:
  url: "sqlite:///{source_db}"
  table: T_STAFF
subscribers:
  - agent: {agent}
    target: {target}
"""

AGENT_CONFIG = """
agent:
  id: {agent}
  state_dir: {state}
  keys_dir: {keys}
platform:
{platform}
  public_keys: {platform_bundle}
  poll_interval: 1s
targets:
  databases: {databases}
  shares:
    main:
      path: {share}
subscriptions:
  default_share: main
  {default_database}
reporting:
  heartbeat_interval: 1m
"""


class Site:
    """A hub directory and one agent (keys, config, state, share) wired together."""

    def __init__(self, root: Path, agent: str = "school-1", exchange: Path | None = None) -> None:
        self.root = root
        self.agent = agent
        self.hub = root / "hub"
        assert hub_main(["init", str(self.hub)]) == 0
        self.agent_keys: PartyKeys = init_keys(root / "agent-keys", agent)
        bundle = root / "agent-bundle.json"
        bundle.write_text(self.agent_keys.public_bundle().to_json())
        assert hub_main(["agent", "add", str(self.hub), "--id", agent, "--keys", str(bundle)]) == 0
        self.platform_keys = load_keys(self.hub / "keys")
        self.share = root / "share"
        self.share.mkdir()
        self.state = root / "state"
        self.exchange = exchange or self.hub / "exchange" / agent
        self.config = root / "agent.yaml"
        self.databases: dict[str, str] = {}
        self.platform = f"  transport: local\n  url: {self.exchange}"
        self.write_config()

    def write_config(self, **overrides: Any) -> None:
        databases = json.dumps(self.databases) if self.databases else "{}"
        text = AGENT_CONFIG.format(
            agent=self.agent, state=self.state, keys=self.root / "agent-keys", platform=self.platform,
            platform_bundle=self.hub / "keys" / "bundle.json", share=self.share, databases=databases,
            default_database="default_database: main" if "main" in self.databases else "")
        for key, value in overrides.items():
            text = text.replace(key, value)
        self.config.write_text(text)

    def add_subscription(self, text: str, name: str) -> None:
        path = self.root / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        assert hub_main(["subscription", "add", str(self.hub), "--file", str(path)]) == 0

    def add_file_subscription(self, sub_id: str, source: Path, frequency: str = "实时") -> None:
        self.add_subscription(FILE_SUBSCRIPTION.format(sub_id=sub_id, directory=source, agent=self.agent,
                                                       frequency=frequency), sub_id)

    def add_table_subscription(self, sub_id: str, source_db: Path, target: str) -> None:
        self.add_subscription(TABLE_SUBSCRIPTION.format(sub_id=sub_id, source_db=source_db, agent=self.agent,
                                                        target=target), sub_id)

    def publish(self, *args: str) -> None:
        assert hub_main(["publish", str(self.hub), *args]) == 0

    def run_once(self) -> int:
        return agent_main(["run", "-c", str(self.config), "--once"])

    def reports(self) -> dict[tuple[str, str], Any]:
        summary = collect(self.hub, offline_after=3600)
        return {(r.agent, r.subscription): r for r in summary.rows}

    def status(self) -> dict[str, Any]:
        from agent.commands.status_cmd import collect as status

        return status(str(self.config))

    def audit_events(self) -> list[dict[str, Any]]:
        lines = (self.state / "audit.log").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    def outbox_documents(self) -> list[dict[str, Any]]:
        from hub.registry import Registry
        from hub.reports import read_outbox
        from protocol.keys import PublicBundle

        registry = Registry(self.hub)
        try:
            agent = next(a for a in registry.agents() if a.id == self.agent)
            docs, invalid = read_outbox(registry, self.platform_keys, self.agent,
                                        PublicBundle.from_dict(agent.bundle))
        finally:
            registry.close()
        assert not invalid, invalid
        return [d.body for d in docs]


@pytest.fixture
def keep_signals() -> Iterator[None]:
    """`edu-agent run` installs SIGTERM/SIGINT/SIGHUP handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def site(tmp_path: Path, keep_signals: None) -> Site:
    return Site(tmp_path)


class StaffSource:
    """A SQLite source table of staff rows the tests change between publishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = 0
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE T_STAFF (GH TEXT PRIMARY KEY, XM TEXT NOT NULL, ZC TEXT, JBGZ TEXT, "
                       "CSRQ TEXT, UPDATETIME TEXT NOT NULL)")

    def _stamp(self) -> str:
        self.clock += 1
        return f"2026-11-{1 + self.clock // 86400:02d} {self.clock // 3600 % 24:02d}:" \
               f"{self.clock // 60 % 60:02d}:{self.clock % 60:02d}"

    def upsert(self, rows: range, title: str = "讲师") -> None:
        with sqlite3.connect(self.path) as db:
            db.executemany(
                "INSERT INTO T_STAFF VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(GH) DO UPDATE SET "
                "ZC = excluded.ZC, JBGZ = excluded.JBGZ, UPDATETIME = excluded.UPDATETIME",
                [(f"T{n:05d}", f"张{'伟芳娜敏静丽强'[n % 7]}{n}", title, f"{5000 + n}.{n % 100:02d}",
                  f"19{60 + n % 40}-0{1 + n % 9}-1{n % 10}", self._stamp()) for n in rows])

    def delete(self, rows: range) -> None:
        with sqlite3.connect(self.path) as db:
            db.executemany("DELETE FROM T_STAFF WHERE GH = ?", [(f"T{n:05d}",) for n in rows])

    def rows(self) -> list[tuple[str, ...]]:
        with sqlite3.connect(self.path) as db:
            return [tuple(str(v) for v in r) for r in db.execute("SELECT * FROM T_STAFF ORDER BY GH")]


def table_rows(url: str, table: str) -> list[tuple[str, ...]]:
    """The target table read back independently of the agent, in source column order."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            cols = [t.c[name] for name in ("GH", "XM", "ZC", "JBGZ", "CSRQ", "UPDATETIME")]
            result = conn.execute(sa.select(*cols).order_by(t.c.GH)).fetchall()
    finally:
        engine.dispose()
    return [tuple(str(v) for v in r) for r in result]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(root.rglob("*"))
            if p.is_file() and ".edu-sync" not in p.parts}


def test_file_subscription_snapshot_change_revoke(site: Site) -> None:
    source = site.root / "source-files"
    _write(source / "课程/高等数学.txt", "第一章 极限\n")
    _write(source / "课程/线性代数.txt", "矩阵\n")
    _write(source / "readme.md", "course material\n")
    site.add_file_subscription("course-files", source)
    site.publish()
    assert site.run_once() == 0
    target = site.share / "course-files"
    assert _tree(target) == _tree(source)

    _write(source / "课程/概率论.txt", "随机变量\n")
    (source / "readme.md").unlink()
    _write(source / "课程/高等数学.txt", "第一章 极限\n第二章 导数\n")
    site.publish()
    assert site.run_once() == 0
    assert _tree(target) == _tree(source)

    rows = site.reports()
    row = rows[(site.agent, "course-files")]
    assert row.state == "ok", row
    assert row.digest_match is True
    assert row.applied_sequence == row.published_sequence == 2

    status = site.status()
    (sub,) = status["subscriptions"]
    assert sub["applied_sequence"] == 2 and sub["digest_match"] is True and sub["state"] == "ok"
    assert agent_main(["verify", "-c", str(site.config)]) == 0

    (target / "课程/线性代数.txt").write_text("tampered\n", encoding="utf-8")  # behind the agent's back
    assert agent_main(["verify", "-c", str(site.config), "--json"]) == 1
    events = [e for e in site.audit_events() if e["event"] == "verify.run"]
    assert events[-1]["ok"] is False and events[-1]["files"] == ["课程/线性代数.txt"]

    assert hub_main(["revoke", str(site.hub), "--subscription", "course-files"]) == 0
    assert site.run_once() == 0
    assert not target.exists()
    assert site.reports()[(site.agent, "course-files")].state == "purged"
    docs = site.outbox_documents()
    deletion = [d for d in docs if d["type"] == "deletion_receipt"]
    assert deletion and deletion[0]["purged"]["files"] == 3
    requests = [d for d in docs if d["type"] == "request"]
    assert requests and requests[0]["request"] == "resend_files"
    assert requests[0]["files"] == ["课程/线性代数.txt"]
    assert verify_audit(site.state / "audit.log").ok
    kinds = {e["event"] for e in site.audit_events()}
    assert {"package.received", "package.applied", "subscription.purged", "agent.start"} <= kinds


def test_table_snapshot_deltas_verify_revoke_sqlite(site: Site, sqlite_url: str) -> None:
    site.databases = {"main": sqlite_url}
    site.write_config()
    source = StaffSource(site.root / "source.db")
    source.upsert(range(1, 301))
    site.add_table_subscription("staff", source.path, "教职工基本信息")
    site.publish()
    assert site.run_once() == 0
    assert table_rows(sqlite_url, "教职工基本信息") == source.rows()
    source.upsert(range(250, 331), title="副教授")  # updates and inserts
    source.delete(range(1, 21))
    site.publish()
    assert site.run_once() == 0
    assert table_rows(sqlite_url, "教职工基本信息") == source.rows()
    row = site.reports()[(site.agent, "staff")]
    assert row.state == "ok" and row.digest_match is True and row.applied_sequence == 2
    assert agent_main(["verify", "-c", str(site.config), "--subscription", "staff"]) == 0
    import sqlalchemy as sa

    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # a local modification behind the agent's back
        conn.execute(sa.text('UPDATE "教职工基本信息" SET "XM" = \'篡改\' WHERE "GH" = \'T00100\''))
    engine.dispose()
    assert agent_main(["verify", "-c", str(site.config), "--subscription", "staff"]) == 1
    assert hub_main(["revoke", str(site.hub), "--subscription", "staff"]) == 0
    assert site.run_once() == 0
    assert site.reports()[(site.agent, "staff")].state == "purged"
    engine = sa.create_engine(sqlite_url)
    assert "教职工基本信息" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    docs = site.outbox_documents()
    requests = [d for d in docs if d["type"] == "request"]
    assert requests[-1]["request"] == "resend_buckets" and len(requests[-1]["buckets"]) == 1
    deletion = [d for d in docs if d["type"] == "deletion_receipt"]
    assert deletion[0]["purged"]["rows"] == len(source.rows())


def test_unknown_signer_is_quarantined_and_others_continue(site: Site) -> None:
    good, bad = site.root / "good", site.root / "bad"
    _write(good / "a.txt", "a\n")
    _write(bad / "b.txt", "b\n")
    site.add_file_subscription("good-files", good)
    site.add_file_subscription("bad-files", bad)
    site.publish("--subscription", "good-files")
    # a package for bad-files signed by a key the agent does not trust, named like a real one
    rogue = init_keys(site.root / "rogue", "platform")
    name = package_filename("bad-files", 1, "ab" * 16)
    with PackageWriter(site.exchange / INBOX / name, kind="files", sender=rogue,
                       recipient=site.agent_keys.public_bundle(), subscription="bad-files", sequence=1,
                       package_id="ab" * 16) as writer:
        writer.write(b"evil")
    assert site.run_once() == 1  # not everything succeeded
    assert _tree(site.share / "good-files") == {"a.txt": "a\n"}
    assert not (site.share / "bad-files").exists()
    quarantined = site.state / "quarantine" / name
    assert quarantined.exists()
    reason = json.loads((site.state / "quarantine" / (name + ".reason")).read_text())
    assert reason["code"] in ("unknown_sender", "signature")
    assert (site.exchange / INBOX / name).exists()  # the agent never deletes from the inbox
    docs = site.outbox_documents()
    errors = [d for d in docs if d["type"] == "error"]
    assert errors and errors[0]["package_id"] == "ab" * 16 and errors[0]["subscription_id"] == "bad-files"
    rejected = [d for d in docs if d["type"] == "apply_receipt" and d["result"] == "rejected"]
    assert rejected
    rows = site.reports()
    assert rows[(site.agent, "good-files")].state == "ok"
    assert rows[(site.agent, "bad-files")].state == "error"
    events = [e["event"] for e in site.audit_events()]
    assert "package.rejected" in events and "package.quarantined" in events
    # a second run does not retry the quarantined package, and still applies new good packages
    _write(good / "c.txt", "c\n")
    site.publish("--subscription", "good-files")
    assert site.run_once() == 1
    assert _tree(site.share / "good-files") == {"a.txt": "a\n", "c.txt": "c\n"}
    assert len([e for e in site.audit_events() if e["event"] == "package.rejected"]) == 1
    status = site.status()
    assert status["quarantine"][0]["package_name"] == name


def test_platform_unreachable_reports_queue_then_delivered(site: Site) -> None:
    source = site.root / "files"
    _write(source / "x.txt", "x\n")
    site.add_file_subscription("files", source)
    site.publish()
    outbox = site.exchange / "outbox"
    # the platform is reachable for reading but the outbox cannot be written (e.g. its share is full)
    outbox.rename(site.exchange / "outbox-away")
    assert site.run_once() == 0  # applying worked; reports could not be delivered
    queued = sorted((site.state / "outqueue").iterdir())
    types = [p.name.split("-", 1)[1] for p in queued]
    assert "apply_receipt.json" in types and "heartbeat.json" in types
    assert site.reports()[(site.agent, "files")].state == "offline"
    (site.exchange / "outbox-away").rename(outbox)
    assert site.run_once() == 0
    assert not list((site.state / "outqueue").iterdir())
    docs = site.outbox_documents()
    assert [d["type"] for d in docs].count("apply_receipt") == 1
    assert site.reports()[(site.agent, "files")].state == "ok"


def test_gap_is_held_and_reported(site: Site) -> None:
    source = site.root / "files"
    _write(source / "1.txt", "1\n")
    site.add_file_subscription("files", source)
    site.publish()
    _write(source / "2.txt", "2\n")
    site.publish()
    _write(source / "3.txt", "3\n")
    site.publish()
    inbox = sorted((site.exchange / INBOX).iterdir())
    assert len(inbox) == 3
    hidden = site.root / "withheld"
    shutil.move(str(inbox[1]), hidden)  # the exchange server withholds sequence 2
    assert site.run_once() == 1
    assert site.run_once() == 1  # still held: reported once, received once
    assert [e["sequence"] for e in site.audit_events() if e["event"] == "package.received"] == [1, 3]
    assert len([e for e in site.audit_events() if e["event"] == "package.held"]) == 1
    assert _tree(site.share / "files") == {"1.txt": "1\n"}
    (sub,) = site.status()["subscriptions"]
    assert sub["state"] == "held" and sub["held_gap"]["found"] == 3
    errors = [d for d in site.outbox_documents() if d["type"] == "error"]
    assert errors[-1]["code"] == "gap"
    shutil.move(str(hidden), inbox[1])
    assert site.run_once() == 0
    assert _tree(site.share / "files") == {"1.txt": "1\n", "2.txt": "2\n", "3.txt": "3\n"}
    assert site.status()["subscriptions"][0]["state"] == "ok"


def test_unmapped_subscription_is_reported_not_guessed(site: Site) -> None:
    source = site.root / "files"
    _write(source / "1.txt", "1\n")
    site.add_file_subscription("files", source)
    site.publish()
    site.write_config(**{"subscriptions:\n  default_share: main\n": ""})
    assert site.run_once() == 1
    assert not (site.share / "files").exists()
    errors = [d for d in site.outbox_documents() if d["type"] == "error"]
    assert errors[0]["code"] == "unmapped" and "maps to no share" in errors[0]["message"]


def test_status_and_audit_commands(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    source = site.root / "files"
    _write(source / "1.txt", "1\n")
    site.add_file_subscription("files", source, frequency="每月")
    site.publish()
    assert site.run_once() == 0
    capsys.readouterr()
    assert agent_main(["status", "-c", str(site.config)]) == 0
    out = capsys.readouterr().out
    assert "files" in out and "match" in out and "not running" in out and "NEXT RUN" in out
    assert agent_main(["status", "-c", str(site.config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["audit_head"]["seq"] > 0
    from datetime import datetime

    from agent.reports import rfc3339
    from agent.scheduling import Schedule

    monthly = Schedule.parse("每月").next_slot(time.time(), datetime.now().astimezone().tzinfo)  # type: ignore[arg-type]
    assert status["subscriptions"][0]["next_run"] == rfc3339(monthly)  # ran just now: next month's slot
    assert agent_main(["audit", "verify", "-c", str(site.config)]) == 0
    head = status["audit_head"]
    assert agent_main(["audit", "verify", "-c", str(site.config), "--expect-head",
                       f"{head['seq'] + 5}:{head['hash']}"]) == 1
    log = site.state / "audit.log"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    log.write_text("".join(lines[:-1]), encoding="utf-8")
    capsys.readouterr()
    assert agent_main(["audit", "verify", "-c", str(site.config)]) == 1
    assert "truncated" in capsys.readouterr().out

    assert agent_main(["resync", "-c", str(site.config), "--subscription", "files"]) == 0
    requests = [d for d in site.outbox_documents() if d["type"] == "request"]
    assert requests[-1]["request"] == "resync" and requests[-1]["subscription_id"] == "files"
    assert os.stat(site.state).st_mode & 0o077 == 0


def test_digest_mismatch_requests_buckets_and_hub_repairs(site: Site, sqlite_url: str) -> None:
    """A row changed locally, then updated by a delta: the digest after apply no longer matches the
    signed one; the receipt says so, a resend of that bucket is requested, the hub's next publish
    honours it and the agent is back in step."""
    import sqlalchemy as sa

    site.databases = {"main": sqlite_url}
    site.write_config()
    source = StaffSource(site.root / "source.db")
    source.upsert(range(1, 201))
    site.add_table_subscription("staff", source.path, "T_JZGJBXX")
    site.publish()
    assert site.run_once() == 0
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text("""UPDATE "T_JZGJBXX" SET "XM" = '篡改' WHERE "GH" = 'T00100'"""))
    engine.dispose()
    source.upsert(range(100, 101), title="教授")  # the platform changes exactly that row
    site.publish()
    site.run_once()
    docs = site.outbox_documents()
    receipt = next(d for d in docs if d["type"] == "apply_receipt" and d["sequence"] == 2)
    assert receipt["digest_match"] is False and len(receipt["mismatched_buckets"]) == 1
    request = next(d for d in docs if d["type"] == "request")
    assert request["request"] == "resend_buckets" and request["buckets"] == receipt["mismatched_buckets"]
    assert site.reports()[(site.agent, "staff")].state == "error"
    status = site.status()["subscriptions"][0]
    assert status["digest_match"] is False and status["mismatch"] == request["buckets"]
    assert agent_main(["status", "-c", str(site.config)]) == 1
    events = [e for e in site.audit_events() if e["event"] == "digest.mismatch"]
    assert events[0]["buckets"] == request["buckets"]

    site.publish()  # honours the request: the current rows of that bucket
    assert site.run_once() == 0
    assert table_rows(sqlite_url, "T_JZGJBXX") == source.rows()
    assert site.reports()[(site.agent, "staff")].state == "ok"
    assert site.status()["subscriptions"][0]["digest_match"] is True


def test_unreachable_platform_fails_fast_within_a_cycle(site: Site) -> None:
    """Once the transport gave up (after its own retries), the rest of the cycle does not retry it
    per subscription and per report: everything waits for the next cycle, reports stay queued."""
    from agent.config import load_config
    from agent.daemon import Daemon
    from agent.notify import Notifier
    from agent.stores import open_store
    from agent.sync import AgentRuntime
    from connectors.transports import LocalTransport, TransportUnavailable

    class Flaky(LocalTransport):
        down = False
        calls = 0

        def _gate(self) -> None:
            if self.down:
                Flaky.calls += 1
                raise TransportUnavailable("sftp://platform: connection refused after 6 attempts")

        def listdir(self, directory: str) -> Any:
            self._gate()
            return super().listdir(directory)

        def fetch(self, remote: str, local: Path, progress: Any = None) -> int:
            self._gate()
            return super().fetch(remote, local, progress)

        def put(self, local: Path, remote: str) -> None:
            self._gate()
            super().put(local, remote)

    for name in ("a", "b", "c"):
        _write(site.root / name / "f.txt", f"{name}\n")
        site.add_file_subscription(f"sub-{name}", site.root / name)
    site.publish()
    transport = Flaky(site.exchange)
    config = load_config(site.config)
    daemon = Daemon(lambda: AgentRuntime(config, site.config, open_store, transport=transport),
                    notifier=Notifier({}))
    daemon.start()
    try:
        transport.down = True
        assert daemon.run_once() is False
        assert Flaky.calls == 1  # one failed listing; the other subscriptions and the reports did not retry
        assert len(daemon.queue) >= 4  # 3 errors + a heartbeat, all kept
        transport.down = False
        daemon._refresh_subscriptions()  # the next cycle
        assert daemon.run_once() is True
        assert len(daemon.queue) == 0
    finally:
        daemon.close()
    assert all((site.share / f"sub-{n}" / "f.txt").exists() for n in "abc")


def test_incompatible_schema_change_is_quarantined_and_stops_only_that_subscription(
    site: Site, sqlite_url: str
) -> None:
    site.databases = {"main": sqlite_url}
    site.write_config()
    source = StaffSource(site.root / "source.db")
    source.upsert(range(1, 51))
    site.add_table_subscription("staff", source.path, "T_STAFF_COPY")
    _write(site.root / "docs" / "a.txt", "a\n")
    site.add_file_subscription("docs", site.root / "docs")
    site.publish()
    assert site.run_once() == 0
    before = table_rows(sqlite_url, "T_STAFF_COPY")
    # the platform narrows a column: applying it would truncate data, so it must not be applied
    text = TABLE_SUBSCRIPTION.format(sub_id="staff", source_db=source.path, agent=site.agent,
                                     target="T_STAFF_COPY").replace("type: VARCHAR2(50), not_null: true}",
                                                                    "type: VARCHAR2(10), not_null: true}")
    site.add_subscription(text, "staff")
    source.upsert(range(1, 3), title="教授")
    _write(site.root / "docs" / "b.txt", "b\n")
    site.publish()
    assert site.run_once() == 1
    assert table_rows(sqlite_url, "T_STAFF_COPY") == before  # nothing altered, nothing half-applied
    assert _tree(site.share / "docs") == {"a.txt": "a\n", "b.txt": "b\n"}  # the other one continued
    (q,) = site.status()["quarantine"]
    assert q["subscription_id"] == "staff" and "SchemaIncompatible" in q["reason"]
    errors = [d for d in site.outbox_documents() if d["type"] == "error"]
    assert errors[-1]["code"] == "schema_incompatible"
    rows = site.reports()
    assert rows[(site.agent, "staff")].state == "error"
    assert rows[(site.agent, "docs")].state == "ok"


def test_forged_subscription_list_is_refused_and_the_last_good_one_kept(site: Site) -> None:
    _write(site.root / "docs" / "a.txt", "a\n")
    site.add_file_subscription("docs", site.root / "docs")
    site.publish()
    assert site.run_once() == 0
    rogue = init_keys(site.root / "rogue", "platform")
    forged = site.exchange / "control" / package_filename("subscriptions", 99, "cd" * 16)
    with PackageWriter(forged, kind="subscriptions", sender=rogue, recipient=site.agent_keys.public_bundle(),
                       subscription="subscriptions", sequence=99, package_id="cd" * 16) as writer:
        writer.write(json.dumps({"subscriptions": []}).encode())
    _write(site.root / "docs" / "b.txt", "b\n")
    site.publish()
    assert site.run_once() == 1  # the list could not be verified ...
    assert _tree(site.share / "docs") == {"a.txt": "a\n", "b.txt": "b\n"}  # ... the last good one still runs
    assert site.run_once() == 1
    errors = [d for d in site.outbox_documents() if d["type"] == "error" and d["subscription_id"] is None]
    assert len(errors) == 1  # reported once, not on every poll
    assert "subscription list unavailable" in errors[0]["message"]
    assert errors[0]["code"] in ("unknown_sender", "signature")


def test_heartbeat_carries_what_the_platform_needs(site: Site) -> None:
    import hashlib

    from agent import __version__

    _write(site.root / "docs" / "a.txt", "a\n")
    site.add_file_subscription("docs", site.root / "docs")
    site.publish()
    _write(site.root / "docs" / "b.txt", "b\n")
    site.publish()
    assert site.run_once() == 0
    heartbeat = [d for d in site.outbox_documents() if d["type"] == "heartbeat"][-1]
    assert heartbeat["version"] == __version__
    assert heartbeat["config_digest"] == hashlib.sha256(site.config.read_bytes()).hexdigest()
    assert heartbeat["uptime_s"] >= 0 and heartbeat["interval_s"] == 60
    assert heartbeat["disk_free"]["share:main"] > 0 and heartbeat["disk_free"]["state_dir"] > 0
    audit_lines = (site.state / "audit.log").read_text().splitlines()
    head = heartbeat["audit_head"]
    assert 0 < head["seq"] <= len(audit_lines)
    assert json.loads(audit_lines[head["seq"] - 1])["hash"] == head["hash"]  # a real point of the chain
    (sub,) = heartbeat["subscriptions"]
    assert sub["subscription_id"] == "docs" and sub["state"] == "ok"
    assert sub["applied_sequence"] == 2 and sub["published_sequence"] == 2 and sub["lag"] == 0
    assert sub["digest_match"] is True and sub["local_digest"] == sub["expected_digest"]
    assert sub["last_success"] and sub["last_error"] is None


def test_rejected_copy_requests_a_resync_and_the_snapshot_heals(site: Site) -> None:
    _write(site.root / "docs" / "a.txt", "a\n")
    site.add_file_subscription("docs", site.root / "docs")
    site.publish()
    _write(site.root / "docs" / "b.txt", "b\n")
    site.publish()
    inbox = sorted((site.exchange / INBOX).iterdir())
    data = bytearray(inbox[0].read_bytes())
    data[-10] ^= 0xFF  # damaged on the exchange server
    inbox[0].write_bytes(bytes(data))
    assert site.run_once() == 1
    assert not (site.share / "docs").exists() or _tree(site.share / "docs") == {}
    requests = [d for d in site.outbox_documents() if d["type"] == "request"]
    assert [r["request"] for r in requests] == ["resync"]
    site.publish()  # the hub honours the request with a snapshot
    assert site.run_once() == 0
    assert _tree(site.share / "docs") == {"a.txt": "a\n", "b.txt": "b\n"}
    assert site.reports()[(site.agent, "docs")].state == "ok"
