"""The Transport contract, run against both implementations: SFTP through a real, chrooted
OpenSSH sshd (tests/sshd.py), and a local directory.

``exchange`` is the hub's side of the same directory: tests write and inspect files there
directly, as the platform would.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.transports import (
    LocalTransport,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    RetryPolicy,
    SftpSettings,
    SftpTransport,
    Transport,
    TransportError,
)
from protocol.layout import is_temp_name, temp_name

FAST_RETRY = RetryPolicy(attempts=3, initial=0.05, maximum=0.2)


@dataclass
class Env:
    transport: Transport
    exchange: Path  # the same directory, as the hub sees it

    def hub_write(self, rel: str, data: bytes) -> Path:
        """Write a file the way the hub does: complete, then renamed into place."""
        path = self.exchange / rel
        tmp = path.with_name(f".{path.name}.hub-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path


@pytest.fixture(params=["sftp", "local"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "local":
        root = tmp_path / "exchange"
        for name in ("inbox", "control", "outbox"):
            (root / name).mkdir(parents=True)
        with LocalTransport(root) as transport:
            yield Env(transport, root)
        return
    sshd = request.getfixturevalue("sshd")
    account = request.getfixturevalue("sftp_account")
    settings = SftpSettings(
        host="127.0.0.1",
        port=sshd.port,
        username=account.user,
        identity_file=account.key_path,
        host_key=sshd.host_key_line,
        connect_timeout=5,
        operation_timeout=10,
        retry=FAST_RETRY,
    )
    with SftpTransport(settings) as transport:
        yield Env(transport, account.chroot)


def _payload(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, not all zeros
    return (block * (size // len(block) + 1))[:size]


def test_listdir_shows_complete_regular_files_sorted(env: Env) -> None:
    env.hub_write("inbox/b.pkg", b"bb")
    env.hub_write("inbox/a.pkg", b"a" * 1000)
    (env.exchange / "inbox" / temp_name("c.pkg")).write_bytes(b"partial")  # a writer's temporary
    (env.exchange / "inbox" / "subdir").mkdir()
    (env.exchange / "inbox" / "link").symlink_to("a.pkg")
    entries = env.transport.listdir("inbox")
    assert [(e.name, e.size) for e in entries] == [("a.pkg", 1000), ("b.pkg", 2)]
    assert all(e.mtime > 0 for e in entries)
    assert env.transport.listdir("control") == []


def test_listdir_missing_directory(env: Env) -> None:
    with pytest.raises(RemoteFileNotFound):
        env.transport.listdir("nope")


def test_fetch_whole_file_with_progress(env: Env, tmp_path: Path) -> None:
    data = _payload(3 * 1024 * 1024 + 17)
    env.hub_write("inbox/p.pkg", data)
    seen: list[tuple[int, int]] = []
    local = tmp_path / "p.pkg.part"
    size = env.transport.fetch("inbox/p.pkg", local, lambda done, total: seen.append((done, total)))
    assert size == len(data)
    assert local.read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_fetch_resumes_from_a_partial_download(env: Env, tmp_path: Path) -> None:
    data = _payload(2 * 1024 * 1024)
    env.hub_write("inbox/p.pkg", data)
    local = tmp_path / "p.part"
    local.write_bytes(data[:700_001])
    seen: list[int] = []
    env.transport.fetch("inbox/p.pkg", local, lambda done, _total: seen.append(done))
    assert local.read_bytes() == data
    assert seen[0] > 700_001 and seen[0] - 700_001 <= 1024 * 1024  # only the rest moved


def test_fetch_complete_file_is_a_no_op(env: Env, tmp_path: Path) -> None:
    env.hub_write("inbox/p.pkg", b"done")
    local = tmp_path / "p"
    local.write_bytes(b"done")
    assert env.transport.fetch("inbox/p.pkg", local) == 4
    assert local.read_bytes() == b"done"


def test_fetch_restarts_when_local_is_longer(env: Env, tmp_path: Path) -> None:
    env.hub_write("inbox/p.pkg", b"short")
    local = tmp_path / "p"
    local.write_bytes(b"something much longer than the remote file")
    env.transport.fetch("inbox/p.pkg", local)
    assert local.read_bytes() == b"short"


def test_fetch_empty_file(env: Env, tmp_path: Path) -> None:
    env.hub_write("inbox/empty", b"")
    assert env.transport.fetch("inbox/empty", tmp_path / "e") == 0
    assert (tmp_path / "e").read_bytes() == b""


def test_fetch_missing_file(env: Env, tmp_path: Path) -> None:
    with pytest.raises(RemoteFileNotFound, match=r"inbox/none\.pkg"):
        env.transport.fetch("inbox/none.pkg", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_read_control_file_and_size_limit(env: Env) -> None:
    env.hub_write("control/subscriptions.json", b'{"subscriptions": []}')
    assert env.transport.read("control/subscriptions.json") == b'{"subscriptions": []}'
    env.hub_write("control/huge", b"x" * 2000)
    with pytest.raises(RemoteFileTooLarge, match="2000 bytes"):
        env.transport.read("control/huge", max_bytes=1000)
    with pytest.raises(RemoteFileNotFound):
        env.transport.read("control/missing")


def test_put_lands_complete_under_its_name(env: Env, tmp_path: Path) -> None:
    data = _payload(5 * 1024 * 1024 + 3, seed=2)
    local = tmp_path / "r.json"
    local.write_bytes(data)
    env.transport.put(local, "outbox/r.json")
    assert (env.exchange / "outbox" / "r.json").read_bytes() == data
    assert os.listdir(env.exchange / "outbox") == ["r.json"]  # no temporary left behind
    assert [e.name for e in env.transport.listdir("outbox")] == ["r.json"]


def test_put_replaces_an_existing_file(env: Env, tmp_path: Path) -> None:
    """A retried upload (the first rename's answer was lost) must simply replace."""
    local = tmp_path / "r"
    for content in (b"first", b"second"):
        local.write_bytes(content)
        env.transport.put(local, "outbox/r")
    assert (env.exchange / "outbox" / "r").read_bytes() == b"second"
    assert os.listdir(env.exchange / "outbox") == ["r"]


def test_put_is_atomic_while_in_progress(env: Env, tmp_path: Path) -> None:
    """Mid-upload the final name does not exist; only a dot-temporary does, and it is not listed."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    first, rest = _payload(1024 * 1024, seed=3), _payload(1024 * 1024, seed=4)
    outbox = env.exchange / "outbox"
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            env.transport.put(fifo, "outbox/report.bin")
        except BaseException as exc:
            errors.append(exc)

    uploader = threading.Thread(target=upload)
    uploader.start()
    with fifo.open("wb") as writer:
        writer.write(first)
        writer.flush()
        deadline = time.monotonic() + 10
        while not os.listdir(outbox) and time.monotonic() < deadline:
            time.sleep(0.01)
        names = os.listdir(outbox)
        assert len(names) == 1 and is_temp_name(names[0]) and names[0].startswith(".report.bin."), names
        assert not (outbox / "report.bin").exists()
        writer.write(rest)
    uploader.join(30)
    assert not errors
    assert (outbox / "report.bin").read_bytes() == first + rest
    assert os.listdir(outbox) == ["report.bin"]


def test_put_of_missing_local_file_leaves_nothing(env: Env, tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="missing"):
        env.transport.put(tmp_path / "missing", "outbox/r")
    assert os.listdir(env.exchange / "outbox") == []


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "/etc/passwd", "inbox/../../x", "inbox/./x", "", "inbox/a\nb"]
)
def test_paths_outside_the_exchange_are_refused(env: Env, tmp_path: Path, bad: str) -> None:
    with pytest.raises(TransportError, match="invalid exchange path"):
        env.transport.fetch(bad, tmp_path / "x")
    with pytest.raises(TransportError, match="invalid exchange path"):
        env.transport.read(bad)
    (tmp_path / "l").write_bytes(b"x")
    with pytest.raises(TransportError, match="invalid exchange path"):
        env.transport.put(tmp_path / "l", bad)


def test_check_reports_each_directory(env: Env) -> None:
    results = env.transport.check()
    assert all(r.ok for r in results), results
    items = " ".join(r.item for r in results)
    assert "inbox/" in items and "control/" in items and "outbox/" in items
    assert os.listdir(env.exchange / "outbox") == []  # the write probe cleaned up
