"""End to end over a real OpenSSH sshd, configured exactly as docs/hub.md (chrooted SFTP per agent).

The hub's exchange directory for the agent *is* the agent's chroot; the agent runs
`edu-agent run --once` with the SFTP transport (pinned host key, key authentication).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.cli import main as hub_main
from tests.sshd import Account, SshdServer, SshdUnavailable
from tests.test_e2e_local import (  # noqa: F401 - keep_signals is a fixture
    Site,
    StaffSource,
    _tree,
    _write,
    keep_signals,
    table_rows,
)


@pytest.fixture
def sftp_site(sshd: SshdServer, chroot_tmp_path: Path,
              keep_signals: None) -> Iterator[tuple[Site, Account]]:  # noqa: F811 - the imported fixture
    site = Site(chroot_tmp_path / "site")
    try:
        account = sshd.add_account(site.agent, chroot=site.exchange)
    except SshdUnavailable as exc:
        pytest.skip(str(exc))
    site.platform = (f"  transport: sftp\n  url: sftp://{account.user}@127.0.0.1:{sshd.port}/\n"
                     f"  host_key: {sshd.host_key_line}\n  identity_file: {account.key_path}\n"
                     "  connect_timeout: 5s\n  operation_timeout: 10s")
    site.write_config()
    yield site, account


def test_files_over_sftp_snapshot_deltas_revoke(sftp_site: tuple[Site, Account]) -> None:
    site, _account = sftp_site
    source = site.root / "files"
    _write(source / "招生/计划.txt", "2026 招生计划\n")
    _write(source / "readme.txt", "v1\n")
    site.add_file_subscription("admissions", source)
    site.publish()
    assert site.run_once() == 0
    target = site.share / "admissions"
    assert _tree(target) == _tree(source)
    for i in range(3):  # three deltas: add, change, remove
        _write(source / f"通知/{i}.txt", f"通知 {i}\n")
        _write(source / "readme.txt", f"v{i + 2}\n")
        if i == 2:
            (source / "招生/计划.txt").unlink()
        site.publish()
        assert site.run_once() == 0
        assert _tree(target) == _tree(source)
    row = site.reports()[(site.agent, "admissions")]
    assert row.state == "ok" and row.digest_match is True
    assert row.applied_sequence == row.published_sequence == 4
    assert hub_main(["revoke", str(site.hub), "--subscription", "admissions"]) == 0
    assert site.run_once() == 0
    assert not target.exists()
    assert site.reports()[(site.agent, "admissions")].state == "purged"


@pytest.mark.parametrize("database", ["pg_url", "mysql_url"])
def test_tables_and_files_over_sftp(sftp_site: tuple[Site, Account], database: str,
                                    request: pytest.FixtureRequest) -> None:
    """The done-when of issue 7: snapshot, three deltas, a file change and a revocation over chrooted
    SFTP into PostgreSQL / MariaDB and a share; the hub sees the agent ok with matching digests."""
    site, _account = sftp_site
    url: str = request.getfixturevalue(database)
    site.databases = {"main": url}
    site.write_config()
    source = StaffSource(site.root / "source.db")
    source.upsert(range(1, 501))
    files = site.root / "files"
    _write(files / "制度/考勤管理办法.txt", "第一条\n")
    site.add_table_subscription("staff", source.path, "T_JZGJBXX")
    site.add_file_subscription("rules", files)
    site.publish()
    assert site.run_once() == 0
    assert table_rows(url, "T_JZGJBXX") == source.rows()
    changes = [
        lambda: source.upsert(range(100, 161), title="教授"),
        lambda: (source.delete(range(1, 41)), source.upsert(range(501, 531))),
        lambda: source.upsert(range(200, 211), title="研究员"),
    ]
    for change in changes:
        change()
        site.publish("--subscription", "staff")
        assert site.run_once() == 0
        assert table_rows(url, "T_JZGJBXX") == source.rows()
    _write(files / "制度/考勤管理办法.txt", "第一条（修订）\n")
    _write(files / "制度/请假规定.txt", "第二条\n")
    site.publish("--subscription", "rules")
    assert site.run_once() == 0
    assert _tree(site.share / "rules") == _tree(files)
    rows = site.reports()
    for sub, sequence in (("staff", 4), ("rules", 2)):
        row = rows[(site.agent, sub)]
        assert row.state == "ok", row
        assert row.digest_match is True
        assert row.applied_sequence == row.published_sequence == sequence
    assert hub_main(["revoke", str(site.hub), "--subscription", "staff"]) == 0
    assert site.run_once() == 0
    rows = site.reports()
    assert rows[(site.agent, "staff")].state == "purged"
    assert rows[(site.agent, "rules")].state == "ok"


def test_wrong_host_key_is_refused(sftp_site: tuple[Site, Account], sshd: SshdServer) -> None:
    site, _account = sftp_site
    source = site.root / "files"
    _write(source / "a.txt", "a\n")
    site.add_file_subscription("files", source)
    site.publish()
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcaEXgzi2XlO5Q81mMRkjDhH9wnYQDx+Lwi+K0cDHbE"
    site.platform = site.platform.replace(sshd.host_key_line, other)
    site.write_config()
    assert site.run_once() == 1
    assert not (site.share / "files").exists()
    queued = [p.name for p in (site.state / "outqueue").iterdir()]
    assert any(n.endswith("-heartbeat.json") for n in queued)  # kept for when the platform is trusted again


def test_sshd_killed_mid_transfer_agent_resumes(sftp_site: tuple[Site, Account], sshd: SshdServer) -> None:
    """A crashed exchange server during a package download: the agent resumes and ends correct."""
    import os
    import subprocess
    import sys
    import time

    site, _account = sftp_site
    source = site.root / "files"
    big = source / "录像/开学典礼.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as fh:  # incompressible, so the package is as large as the file
        for _ in range(48):
            fh.write(os.urandom(1 << 20))
    _write(source / "说明.txt", "开学典礼录像\n")
    site.add_file_subscription("video", source)
    site.publish()
    incoming = site.state / "incoming"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(site.config), "--once"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    killed_at = 0
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(incoming.glob("video.*.pkg")) if incoming.exists() else []
        size = parts[0].stat().st_size if parts else 0
        if size > 4 << 20:
            sshd.kill()
            killed_at = size
            break
        time.sleep(0.005)
    assert killed_at, "the download finished before the server could be killed"
    time.sleep(1.5)
    sshd.start()
    output, _ = proc.communicate(timeout=120)
    if proc.returncode != 0:  # the retry window closed first: the next run resumes the partial file
        assert site.run_once() == 0, output
    else:
        assert '"event": "sftp.resume"' in output  # reconnected within the run, continued at an offset
    assert (site.share / "video" / "录像" / "开学典礼.bin").read_bytes() == big.read_bytes()
    assert (site.share / "video" / "说明.txt").read_text(encoding="utf-8") == "开学典礼录像\n"
    row = site.reports()[(site.agent, "video")]
    assert row.state == "ok" and row.digest_match is True
    received = [json.loads(line) for line in (site.state / "audit.log").read_text().splitlines()
                if '"package.received"' in line]
    assert len(received) == 1  # one package, fetched once across the crash (resumed, not restarted)
