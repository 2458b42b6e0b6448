"""`edu-agent demo [--dir DIR]`: the whole exchange on one machine, no server needed.

A reference platform (``edu-hub``) in DIR/hub publishes a SQLite source table of realistic
staff data (教职工基本信息) and a small file tree; an agent with the local transport applies
them into a SQLite database and a share directory. Then the source changes (inserts, updates,
deletes, a file added and one removed), is published and applied again, and every digest is
verified. Each step says what happened and where to look.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sqlite3
import tempfile
import textwrap
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent import exitcodes

AGENT_ID = "demo-school"
STAFF_ROWS = 3000
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国文斌宇浩凯健俊帆晨欣怡子涵梓轩思远"
TITLES = ["教授", "副教授", "讲师", "助教", "研究员", "副研究员", "高级实验师", "实验师", "高级工程师",
          "工程师"]
DEPARTMENTS = ["数学科学学院", "物理学院", "化学化工学院", "计算机科学与技术学院", "外国语学院",
               "经济管理学院", "马克思主义学院", "教育学院", "人事处", "教务处", "图书馆", "后勤保障处"]
DEGREES = ["博士研究生", "硕士研究生", "大学本科"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole system on this machine (hub + agent, no server)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary directory)")
    parser.add_argument("--rows", type=_positive, default=STAFF_ROWS,
                        help=f"staff rows (default {STAFF_ROWS})")
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 10:
        raise argparse.ArgumentTypeError("at least 10 rows")
    return value


class Demo:
    def __init__(self, root: Path, rows: int) -> None:
        self.root = root.absolute()
        self.rows = rows
        self.hub = self.root / "hub"
        self.source_db = self.root / "source" / "staff.db"
        self.source_files = self.root / "source" / "files"
        self.agent_dir = self.root / "agent"
        self.config = self.agent_dir / "config.yaml"
        self.target_db = self.agent_dir / "target.db"
        self.share = self.agent_dir / "share"
        self.rng = random.Random(20261125)  # noqa: S311 - reproducible demo data, not a secret
        self.step_no = 0

    # -- output ------------------------------------------------------------------------------
    def step(self, title: str) -> None:
        self.step_no += 1
        print(f"\n== {self.step_no}. {title}")

    def say(self, text: str) -> None:
        print(textwrap.indent(text, "   "))

    # -- the source ---------------------------------------------------------------------------
    def _person(self, n: int, when: datetime) -> tuple[Any, ...]:
        rng = self.rng
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        born = date(1960, 1, 1) + timedelta(days=rng.randrange(0, 365 * 38))
        hired = max(born + timedelta(days=365 * 23 + rng.randrange(0, 365 * 10)), date(1985, 9, 1))
        return (f"T{n:06d}", name, rng.choice("男女"), born.isoformat(), rng.choice(TITLES),
                rng.choice(DEPARTMENTS), rng.choice(DEGREES), hired.isoformat(),
                f"{rng.randrange(5000, 30000)}.{rng.randrange(0, 100):02d}",
                when.strftime("%Y-%m-%d %H:%M:%S"))

    def make_source(self) -> None:
        self.source_db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self.source_db) as db:
            db.execute("""CREATE TABLE T_JZGJBXX (
                GH TEXT PRIMARY KEY, XM TEXT NOT NULL, XB TEXT, CSRQ TEXT, ZC TEXT, BM TEXT, XL TEXT,
                RZRQ TEXT, JBGZ TEXT, UPDATETIME TEXT NOT NULL)""")
            start = datetime(2026, 11, 1, 8, 0, 0)
            db.executemany("INSERT INTO T_JZGJBXX VALUES (?,?,?,?,?,?,?,?,?,?)",
                           [self._person(n, start + timedelta(seconds=n)) for n in range(1, self.rows + 1)])
        files = {
            "课程大纲/高等数学.md": "# 高等数学\n第一章 函数与极限\n第二章 导数与微分\n",
            "课程大纲/大学英语.md": "# 大学英语\nUnit 1 University Life\n",
            "教学日历/2026秋季.csv": "周次,日期,内容\n1,2026-09-07,开学\n",
            "通知/期末考试安排.txt": "期末考试于第十八周进行。\n",
        }
        for rel, text in files.items():
            path = self.source_files / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    def change_source(self) -> dict[str, int]:
        now = datetime(2026, 11, 25, 9, 30, 0)
        with sqlite3.connect(self.source_db) as db:
            keys = [r[0] for r in db.execute("SELECT GH FROM T_JZGJBXX ORDER BY GH")]
            updated = self.rng.sample(keys, max(1, len(keys) // 30))
            for i, key in enumerate(updated):
                db.execute("UPDATE T_JZGJBXX SET ZC = ?, BM = ?, UPDATETIME = ? WHERE GH = ?",
                           (self.rng.choice(TITLES), self.rng.choice(DEPARTMENTS),
                            (now + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S"), key))
            deleted = self.rng.sample(sorted(set(keys) - set(updated)), max(1, len(keys) // 100))
            db.executemany("DELETE FROM T_JZGJBXX WHERE GH = ?", [(k,) for k in deleted])
            inserted = [self._person(self.rows + n, now + timedelta(minutes=5, seconds=n))
                        for n in range(1, max(2, len(keys) // 50) + 1)]
            db.executemany("INSERT INTO T_JZGJBXX VALUES (?,?,?,?,?,?,?,?,?,?)", inserted)
        (self.source_files / "通知/期末考试安排.txt").unlink()
        (self.source_files / "通知/寒假放假通知.txt").write_text("寒假自 2027 年 1 月 18 日开始。\n",
                                                             encoding="utf-8")
        return {"updated": len(updated), "deleted": len(deleted), "inserted": len(inserted)}

    # -- hub and agent ------------------------------------------------------------------------
    def subscriptions(self) -> None:
        staff = f"""
id: staff-basic
catalog:
  provider: 人事处
  resource_name: 人事处数据-教职工基本信息
  mounted_resource_name: 人事处数据-教职工基本信息表
  summary: 全校在职教职工的基本信息（工号、姓名、职称、部门等），1998 年至今
  data_name: 教职工基本信息
  data_format: 库表
  sharing_type: authorised
  agreement: {{id: SH-EDU-2026-0042, valid_from: 2026-01-01, valid_until: 2027-12-31}}
  security_level: 三级
  update_frequency: 每天
  provision_method: table
  time_range: 1998年至今
  topic: 教师主题库
  scope: 高校
dictionary:
  - {{name: GH, label: 工号, meaning: 教职工工号, type: VARCHAR2(20), not_null: true, primary_key: true}}
  - {{name: XM, label: 姓名, meaning: 姓名, type: VARCHAR2(50), not_null: true}}
  - {{name: XB, label: 性别, meaning: 性别, type: VARCHAR2(4)}}
  - {{name: CSRQ, label: 出生日期, meaning: 出生日期, type: DATE, format: YYYY-MM-DD}}
  - {{name: ZC, label: 职称, meaning: 专业技术职务, type: VARCHAR2(50)}}
  - {{name: BM, label: 部门, meaning: 所在部门, type: VARCHAR2(100)}}
  - {{name: XL, label: 学历, meaning: 最高学历, type: VARCHAR2(20)}}
  - {{name: RZRQ, label: 入职日期, meaning: 入职日期, type: DATE, format: YYYY-MM-DD}}
  - {{name: UPDATETIME, label: 更新时间, meaning: 最近一次更新的时间, type: VARCHAR2(50), not_null: true,
     format: "YYYY-MM-DD HH:MM:SS", example: "2015-12-10 13:15:36"}}
source:
  url: "sqlite:///{self.source_db}"
  table: T_JZGJBXX
subscribers:
  - agent: {AGENT_ID}
    target: JZGJBXX
"""
        files = f"""
id: course-files
catalog:
  provider: 教务处
  resource_name: 教务处数据-课程资料信息
  mounted_resource_name: 教务处数据-课程资料信息表
  summary: 课程大纲、教学日历与教务通知
  data_name: 课程资料
  data_format: 文件
  sharing_type: unconditional
  security_level: 二级
  update_frequency: 每时
  provision_method: file
  time_range: 2020年至今
  topic: 教学主题库
  scope: 高校
source:
  directory: "{self.source_files}"
subscribers:
  - agent: {AGENT_ID}
"""
        for name, text in (("staff-basic", staff), ("course-files", files)):
            path = self.hub / f"{name}.yaml"
            path.write_text(text, encoding="utf-8")
            self.hub_cli("subscription", "add", str(self.hub), "--file", str(path), quiet=True)

    def hub_cli(self, *args: str, quiet: bool = False) -> None:
        from hub.cli import main as hub_main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = hub_main(list(args))
        if not quiet or code != 0:
            self.say(out.getvalue().rstrip())
        if code != 0:
            raise RuntimeError(f"edu-hub {' '.join(args)} exited {code}")

    def agent_cli(self, *args: str, expect: tuple[int, ...] = (0,)) -> int:
        from agent.cli import main as agent_main

        code = agent_main(["--log-level", "warning", *args])
        if code not in expect:
            raise RuntimeError(f"edu-agent {' '.join(args)} exited {code}")
        return code

    def setup_agent(self) -> None:
        from protocol.keys import init_keys

        keys = init_keys(self.agent_dir / "keys", AGENT_ID)
        bundle = self.agent_dir / "bundle.json"
        bundle.write_text(keys.public_bundle().to_json())
        self.hub_cli("agent", "add", str(self.hub), "--id", AGENT_ID, "--keys", str(bundle), quiet=True)
        self.share.mkdir(parents=True)
        self.config.write_text(f"""\
# Written by `edu-agent demo`: an agent reading the hub's exchange directory directly.
agent:
  id: {AGENT_ID}
  state_dir: {self.agent_dir / "state"}
  keys_dir: {self.agent_dir / "keys"}
platform:
  transport: local
  url: {self.hub / "exchange" / AGENT_ID}
  public_keys: {self.hub / "keys" / "bundle.json"}
  poll_interval: 10s
targets:
  databases:
    local: sqlite:///{self.target_db}
  shares:
    share: {{path: {self.share}}}
subscriptions:
  default_database: local
  default_share: share
reporting:
  heartbeat_interval: 1m
""", encoding="utf-8")

    def show_state(self) -> None:
        from agent.commands.status_cmd import collect

        status = collect(str(self.config))
        for s in status["subscriptions"]:
            digest = {True: "digest matches the platform's", False: "DIGEST MISMATCH", None: "no digest"}
            self.say(f"{s['subscription_id']:<13} -> {s['target']:<22} sequence {s['applied_sequence']}, "
                     f"{digest[s['digest_match']]}, state {s['state']}")

    def count_target(self) -> int:
        with sqlite3.connect(self.target_db) as db:
            return int(db.execute('SELECT COUNT(*) FROM "JZGJBXX"').fetchone()[0])

    def compare_with_source(self) -> bool:
        columns = "GH, XM, XB, CSRQ, ZC, BM, XL, RZRQ, UPDATETIME"
        with sqlite3.connect(self.source_db) as src, sqlite3.connect(self.target_db) as dst:
            a = src.execute(f"SELECT {columns} FROM T_JZGJBXX ORDER BY GH").fetchall()  # noqa: S608
            b = [tuple(str(v) if v is not None else None for v in row)
                 for row in dst.execute(f'SELECT {columns} FROM "JZGJBXX" ORDER BY GH')]  # noqa: S608
        files_a = sorted(p.relative_to(self.source_files).as_posix() for p in self.source_files.rglob("*")
                         if p.is_file())
        share_dir = self.share / "course-files"
        files_b = sorted(p.relative_to(share_dir).as_posix() for p in share_dir.rglob("*")
                         if p.is_file() and ".edu-sync" not in p.parts)
        same_rows = [tuple(str(v) for v in r) for r in a] == [tuple(str(v) for v in r) for r in b]
        self.say(f"independent comparison: {len(a)} source rows vs {len(b)} local rows -> "
                 f"{'identical' if same_rows else 'DIFFERENT'}; files "
                 f"{'identical' if files_a == files_b else 'DIFFERENT'} ({len(files_b)} files)")
        return same_rows and files_a == files_b

    def run(self) -> bool:
        print(f"edu-sync-agent demo in {self.root}")
        self.step("the platform side: a hub with keys, a registry and an exchange directory")
        self.hub_cli("init", str(self.hub), quiet=True)
        self.make_source()
        self.say(f"source table 教职工基本信息: {self.source_db} ({self.rows} rows)\n"
                 f"source files: {self.source_files}")

        self.step("the agent: its own keys, registered with the hub; subscriptions in the catalog")
        self.setup_agent()
        self.subscriptions()
        self.say(f"agent config: {self.config}")

        self.step("publish a snapshot (signed, encrypted packages into the agent's inbox)")
        self.hub_cli("publish", str(self.hub))

        self.step("the agent applies everything pending: edu-agent run --once")
        self.agent_cli("run", "-c", str(self.config), "--once")
        self.show_state()
        self.say(f"{self.count_target()} rows in {self.target_db} table JZGJBXX")

        self.step("the source changes: updates, deletes, inserts; a file added, one removed")
        changes = self.change_source()
        rows = ", ".join(f"{v} rows {k}" for k, v in changes.items())
        self.say(f"{rows}; file 通知/寒假放假通知.txt added, 通知/期末考试安排.txt removed")

        self.step("publish the changes (deltas) and apply them")
        self.hub_cli("publish", str(self.hub))
        self.agent_cli("run", "-c", str(self.config), "--once")
        self.show_state()

        self.step("verify: recompute digests from the local table and files (edu-agent verify)")
        verified = self.agent_cli("verify", "-c", str(self.config), expect=(0, 1)) == 0
        same = self.compare_with_source()

        self.step("the platform reads the agent's reports (edu-hub reports)")
        self.hub_cli("reports", str(self.hub))

        self.step("where to look")
        where = [
            ("local status", f"edu-agent status -c {self.config}"),
            ("audit trail", f"edu-agent audit verify -c {self.config}"),
            ("audit log", str(self.agent_dir / "state" / "audit.log")),
            ("synced table", f"sqlite3 {self.target_db} 'SELECT * FROM JZGJBXX LIMIT 5'"),  # noqa: S608
            ("synced files", str(self.share / "course-files")),
            ("platform reports", f"edu-hub reports {self.hub}"),
            ("exchange directory", f"{self.hub / 'exchange' / AGENT_ID}  (inbox/ outbox/ control/)"),
            ("run as a daemon", f"edu-agent run -c {self.config}"),
        ]
        self.say("\n".join(f"{what:<19} {how}" for what, how in where))
        ok = verified and same
        print(f"\ndemo {'succeeded' if ok else 'FAILED'}")
        return ok


def run(args: argparse.Namespace) -> int:
    root = args.dir or Path(tempfile.mkdtemp(prefix="edu-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        print(f"{root} is not empty; give an empty or new directory with --dir")
        return exitcodes.USAGE
    return exitcodes.OK if Demo(root, args.rows).run() else exitcodes.FAILURE
