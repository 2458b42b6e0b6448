"""Identities: key directory creation, permissions, loading, public bundles, CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main
from protocol.errors import KeyFormatError, KeyPermissionError, KeysError, KeysExistError, LayoutError
from protocol.keys import (
    BUNDLE_FILE,
    ENCRYPTION_KEY_FILE,
    SIGNING_KEY_FILE,
    PartyKeys,
    PublicBundle,
    init_keys,
    load_bundle,
    load_keys,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_files_0600_in_a_0700_directory(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)  # a careless umask must not widen the modes
    try:
        keys = init_keys(tmp_path / "keys", "school-1")
    finally:
        os.umask(old_umask)
    directory = tmp_path / "keys"
    assert mode(directory) == 0o700
    assert mode(directory / SIGNING_KEY_FILE) == 0o600
    assert mode(directory / ENCRYPTION_KEY_FILE) == 0o600
    assert load_bundle(directory / BUNDLE_FILE) == keys.public_bundle()


def test_load_round_trips_the_identity(tmp_path: Path) -> None:
    keys = init_keys(tmp_path / "k", "platform")
    loaded = load_keys(tmp_path / "k")
    assert loaded.party_id == "platform"
    assert loaded.public_bundle() == keys.public_bundle()
    message = b"signed by the loaded key"
    keys.public_bundle().signing_key().verify(loaded.signing_key.sign(message), message)


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", "school-1")
    before = (tmp_path / "k" / SIGNING_KEY_FILE).read_bytes()
    with pytest.raises(KeysExistError, match="refusing to overwrite"):
        init_keys(tmp_path / "k", "school-1")
    assert (tmp_path / "k" / SIGNING_KEY_FILE).read_bytes() == before


def test_init_refuses_when_any_key_file_exists(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / ENCRYPTION_KEY_FILE).write_text("left over")
    with pytest.raises(KeysExistError, match=ENCRYPTION_KEY_FILE):
        init_keys(tmp_path / "k", "school-1")


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o660, 0o602, 0o610])
@pytest.mark.parametrize("name", [SIGNING_KEY_FILE, ENCRYPTION_KEY_FILE])
def test_loading_a_private_key_readable_by_others_is_refused(tmp_path: Path, name: str, bits: int) -> None:
    init_keys(tmp_path / "k", "school-1")
    os.chmod(tmp_path / "k" / name, bits)
    with pytest.raises(KeyPermissionError, match=rf"{name} has mode 0{bits:o}.*chmod 600"):
        load_keys(tmp_path / "k")


def test_symlinked_private_key_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", "school-1")
    real = tmp_path / "elsewhere.key"
    os.rename(tmp_path / "k" / SIGNING_KEY_FILE, real)
    os.symlink(real, tmp_path / "k" / SIGNING_KEY_FILE)
    with pytest.raises(KeysError, match=r"cannot open private key file .*signing\.key"):
        load_keys(tmp_path / "k")


def test_mismatched_bundle_is_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "a", "school-1")
    init_keys(tmp_path / "b", "school-1")
    os.replace(tmp_path / "b" / BUNDLE_FILE, tmp_path / "a" / BUNDLE_FILE)
    with pytest.raises(KeyFormatError, match="does not match the private keys"):
        load_keys(tmp_path / "a")


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    init_keys(tmp_path / "k", "school-1")
    (tmp_path / "k" / ENCRYPTION_KEY_FILE).unlink()
    with pytest.raises(KeyFormatError, match=r"encryption\.key does not exist"):
        load_keys(tmp_path / "k")


def test_bundle_json_round_trip_and_key_ids() -> None:
    bundle = PartyKeys.generate("school-1").public_bundle()
    again = PublicBundle.from_json(bundle.to_json())
    assert again == bundle
    data = json.loads(bundle.to_json())
    assert data["signing_key_id"] == bundle.signing_key_id
    assert len(bundle.signing_key_id) == 64
    assert bundle.signing_key_id != bundle.encryption_key_id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"signing_key_id": "0" * 64}, "does not match the fingerprint"),
        ({"encryption_public_key": "!!"}, "not valid base64"),
        ({"format": "other"}, "format must be"),
        ({"party_id": "../etc"}, "invalid party id"),
        ({"signing_public_key": "AAAA"}, "32 raw bytes"),
    ],
)
def test_bad_bundles_are_rejected_with_the_reason(change: dict[str, str], message: str) -> None:
    data = json.loads(PartyKeys.generate("x").public_bundle().to_json())
    data.update(change)
    with pytest.raises(KeyFormatError, match=message):
        PublicBundle.from_json(json.dumps(data))


def test_party_ids_are_validated(tmp_path: Path) -> None:
    with pytest.raises(LayoutError):
        init_keys(tmp_path / "k", "a/b")
    assert not (tmp_path / "k").exists()


def test_repr_hides_private_keys() -> None:
    assert "hidden" in repr(PartyKeys.generate("x"))


def test_cli_init_prints_bundle_and_show_repeats_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "init", "--dir", str(tmp_path / "k"), "--id", "school-9"]) == 0
    printed = capsys.readouterr().out
    bundle = PublicBundle.from_json(printed)
    assert bundle.party_id == "school-9"
    assert main(["keys", "show", "--dir", str(tmp_path / "k")]) == 0
    assert PublicBundle.from_json(capsys.readouterr().out) == bundle
    assert main(["keys", "init", "--dir", str(tmp_path / "k"), "--id", "school-9"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_cli_show_refuses_loose_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_keys(tmp_path / "k", "school-1")
    os.chmod(tmp_path / "k" / SIGNING_KEY_FILE, 0o644)
    assert main(["keys", "show", "--dir", str(tmp_path / "k")]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "k"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # noqa: S103 -- the loose mode is the point of the test
    init_keys(directory, "school-1")
    assert mode(directory) == 0o700
