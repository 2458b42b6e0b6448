"""Local-directory transport specifics: links never lead out of the exchange root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectors.transports import LocalTransport, TransportError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "exchange"
    for name in ("inbox", "control", "outbox"):
        (root / name).mkdir(parents=True)
    return root


def test_symlinked_file_is_neither_listed_nor_read(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the exchange")
    (root / "inbox" / "p.pkg").symlink_to(secret)
    transport = LocalTransport(root)
    assert transport.listdir("inbox") == []
    with pytest.raises(TransportError, match="symbolic link"):
        transport.fetch("inbox/p.pkg", tmp_path / "out")
    with pytest.raises(TransportError, match="symbolic link"):
        transport.read("inbox/p.pkg")


def test_symlinked_directory_is_refused(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_bytes(b"x")
    os.rmdir(root / "outbox")
    (root / "outbox").symlink_to(elsewhere)
    (root / "control").rmdir()
    (root / "control").symlink_to(elsewhere)
    transport = LocalTransport(root)
    with pytest.raises(TransportError, match="symbolic link"):
        transport.listdir("control")
    with pytest.raises(TransportError, match="symbolic link"):
        transport.read("control/x")
    local = tmp_path / "r"
    local.write_bytes(b"r")
    with pytest.raises(TransportError, match="symbolic link"):
        transport.put(local, "outbox/r")
    assert sorted(os.listdir(elsewhere)) == ["x"]
    assert not next(r for r in transport.check() if "outbox" in r.item).ok


def test_missing_root_is_reported(tmp_path: Path) -> None:
    transport = LocalTransport(tmp_path / "nowhere")
    with pytest.raises(TransportError, match="No such file"):
        transport.listdir("inbox")
    assert not any(r.ok for r in transport.check())


def test_put_is_durable_and_private(root: Path, tmp_path: Path) -> None:
    local = tmp_path / "r"
    local.write_bytes(b"receipt")
    LocalTransport(root).put(local, "outbox/r")
    assert (root / "outbox" / "r").stat().st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_open_transport_local(root: Path) -> None:
    from agent.config import PlatformSection
    from connectors.transports import open_transport

    (root / "control" / "subs.json").write_bytes(b"{}")
    platform = PlatformSection.model_construct(transport="local", url=f"file://{root}")
    with open_transport(platform) as transport:
        assert isinstance(transport, LocalTransport) and transport.root == root
        assert transport.read("control/subs.json") == b"{}"
