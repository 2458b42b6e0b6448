"""File subscriptions: new, changed, removed files; touch without change; excluded files and symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol.layout import sorted_packages
from protocol.package import open_package
from tests.test_hub_common import HubFixture

SUB = """
id: docs
catalog:
  provider: 教务处
  resource_name: 教务处数据-课程表文件
  mounted_resource_name: 教务处数据-课程表文件库
  summary: 各学期课程表
  data_name: 课程表
  data_format: PDF
  sharing_type: unconditional
  security_level: 二级
  update_frequency: {{value: 自定义, cron: "0 2 * * 1"}}
  provision_method: file
  time_range: 2020年至今
  topic: 教学主题库
  scope: 高校
source:
  directory: {directory}
  include: ["**/*.pdf", "*.txt"]
  exclude: ["private/**"]
subscribers:
  - agent: school-1
"""


def _packages(hub: HubFixture) -> list[tuple[dict, bytes]]:
    names, _ = sorted_packages(os.listdir(hub.inbox("school-1")))
    out = []
    trusted = {"platform": hub.platform.public_bundle()}
    for name in names:
        with open_package(
            hub.inbox("school-1") / name.filename,
            trusted_senders=trusted,
            recipient=hub.agent_keys["school-1"],
        ) as pkg:
            out.append((dict(pkg.header.manifest or {}), b"".join(pkg.iter_plaintext())))
    return out


def test_directory_changes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "2025" / "秋").mkdir(parents=True)
    (src / "private").mkdir()
    (src / "2025" / "秋" / "课表.pdf").write_bytes(b"%PDF autumn")
    (src / "readme.txt").write_text("hello")
    (src / "private" / "secret.pdf").write_bytes(b"PRIVATE")
    (src / "notes.doc").write_bytes(b"NOT INCLUDED")
    os.symlink("/etc/passwd", src / "link.txt")
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(SUB.format(directory=src))
    hub.publish()
    ((manifest, payload),) = _packages(hub)
    assert manifest["base_digest"] is None
    assert [e["path"] for e in manifest["entries"]] == ["2025/秋/课表.pdf", "readme.txt"]
    assert payload == b"%PDF autumnhello"

    os.utime(src / "readme.txt", ns=(1, 1))  # mtime moves, content does not: no change
    (src / "2025" / "秋" / "课表.pdf").write_bytes(b"%PDF autumn v2")
    (src / "new.pdf").write_bytes(b"new")
    (src / "readme.txt").unlink()
    hub.publish()
    manifest, payload = _packages(hub)[-1]
    assert [e["path"] for e in manifest["entries"]] == ["2025/秋/课表.pdf", "new.pdf"]
    assert manifest["removed"] == ["readme.txt"]
    assert manifest["base_digest"] == _packages(hub)[0][0]["expected_digest"]
    assert payload == b"%PDF autumn v2new"

    os.utime(src / "new.pdf", ns=(5, 5))
    hub.publish()
    assert len(_packages(hub)) == 2  # touched only: nothing sent
    everything = b"".join(p for _, p in _packages(hub))
    assert b"PRIVATE" not in everything and b"NOT INCLUDED" not in everything and b"root:" not in everything


def test_file_changed_while_publishing_aborts(tmp_path: Path) -> None:
    from hub.catalog import parse_subscription
    from hub.files import FileCapture, FileCaptureError
    from hub.state import PublishState

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.pdf").write_bytes(b"one")
    sub = parse_subscription(SUB.format(directory=src), "sub.yaml")
    state = PublishState(tmp_path / "state.db")
    change = FileCapture(sub, state).capture(snapshot=False)
    (src / "a.pdf").write_bytes(b"two")  # same size, other bytes

    class Sink:
        def write(self, data: bytes) -> None:
            pass

    with pytest.raises(FileCaptureError, match="changed while it was being published"):
        change.write_payload(Sink(), change.manifest)
    state.close()


def test_one_failing_subscription_does_not_stop_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.cli import main as hub_main
    from tests.test_hub_common import subscription_text

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.pdf").write_bytes(b"one")
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(SUB.format(directory=src))
    broken = subscription_text(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}", sub_id="broken")
    hub.add_subscription(broken, name="broken.yaml")
    capsys.readouterr()
    assert hub_main(["publish", str(hub.root)]) == 1
    out = capsys.readouterr().out
    assert "broken: ERROR" in out and "docs: school-1#1 files" in out
    assert len(_packages(hub)) == 1


def test_large_changes_split_and_apply_in_the_share_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the per-package entry limit a change becomes several packages, each verified by
    the agent's real ShareStore (limit lowered to 2 so the test stays small)."""
    import hub.files
    from connectors.stores.shares.store import ShareStore

    monkeypatch.setattr(hub.files, "MAX_ENTRIES_PER_PACKAGE", 2)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.txt").write_text(f"file {i}")
    hub = HubFixture(tmp_path, ["school-1"])
    hub.add_subscription(SUB.format(directory=src))
    hub.publish()
    (src / "f0.txt").unlink()
    (src / "f1.txt").unlink()
    (src / "f2.txt").unlink()
    (src / "f4.txt").write_text("file 4, changed")
    (src / "g.txt").write_text("new")
    (src / "h.txt").write_text("new too")
    hub.publish()
    share = tmp_path / "share"
    share.mkdir()
    store = ShareStore(share)
    trusted = {"platform": hub.platform.public_bundle()}
    names, _ = sorted_packages(os.listdir(hub.inbox("school-1")))
    manifests = []
    for name in names:
        path = hub.inbox("school-1") / name.filename
        with open_package(path, trusted_senders=trusted, recipient=hub.agent_keys["school-1"]) as pkg:
            manifests.append(pkg.header.manifest)
            result = store.apply(pkg.header, pkg.plaintext(), "docs")
        assert result.status == "applied" and result.match, result
    # snapshot of 5 in 3 packages; then 3 removals (2 + 1), then 3 new/changed files (2 + 1)
    assert [len(m["entries"]) for m in manifests] == [2, 2, 1, 0, 0, 2, 1]
    assert [len(m["removed"]) for m in manifests] == [0, 0, 0, 2, 1, 0, 0]
    assert manifests[0]["base_digest"] is None and all(m["base_digest"] for m in manifests[1:])
    copied = {p.name: p.read_text() for p in (share / "docs").iterdir() if not p.name.startswith(".")}
    assert copied == {p.name: p.read_text() for p in src.iterdir()}
