"""The configuration model: located errors, units, secrets, resolver, and the example file."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (
    ConfigError,
    DirectoryTarget,
    SecretError,
    TableTarget,
    UnmappedSubscription,
    config_warnings,
    format_duration,
    format_size,
    load_config,
    parse_duration,
    parse_host_key,
    parse_size,
)
from protocol.keys import init_keys

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
BUNDLE = REPO / "examples" / "platform-bundle.json"
IDENTITY = REPO / "examples" / "keys" / "agent_ssh_ed25519"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcaEXgzi2XlO5Q81mMRkjDhH9wnYQDx+Lwi+K0cDHbE"

# A complete, valid config; tests edit a line or two. Line numbers matter in assertions.
BASE = f"""\
agent:
  id: school-1
  state_dir: state
  keys_dir: keys
platform:
  transport: sftp
  url: sftp://agent1@127.0.0.1:2222/
  host_key: {HOST_KEY}
  identity_file: id_ed25519
  public_keys: platform.json
  poll_interval: 30s
targets:
  databases:
    main: sqlite:///main.db
  shares:
    files:
      path: share
subscriptions:
  default_database: main
  default_share: files
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config directory holding the files BASE refers to."""
    shutil.copy(IDENTITY, tmp_path / "id_ed25519")
    (tmp_path / "id_ed25519").chmod(0o600)
    shutil.copy(BUNDLE, tmp_path / "platform.json")
    for name in ("state", "share"):
        (tmp_path / name).mkdir()
    init_keys(tmp_path / "keys", "school-1")
    return tmp_path


def write(site: Path, text: str, name: str = "config.yaml") -> Path:
    path = site / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(e) for e in info.value.errors]


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.agent.id == "school-310101-0001"
    assert config.platform.transport == "sftp"
    assert config.platform.sftp.host == "exchange.edu-platform.example"
    assert config.platform.identity_file == REPO / "examples" / "keys" / "agent_ssh_ed25519"
    assert config.targets.databases["main"].password_source is not None
    assert config.metrics.enabled is False


def test_example_shows_every_key() -> None:
    """Every key of the model appears in config.example.yaml (commented out or set)."""
    from pydantic import BaseModel

    from agent.config import AgentConfig, Database, Share, SubscriptionOverride

    text = EXAMPLE.read_text()
    models: list[type[BaseModel]] = [AgentConfig, Database, Share, SubscriptionOverride]
    models += [
        type(getattr(load_config(EXAMPLE), name)) for name in AgentConfig.model_fields
    ]  # each section's model
    missing = [
        f"{model.__name__}.{field}"
        for model in models
        for field in model.model_fields
        if f"{field}:" not in text
    ]
    assert missing == []


def test_base_config_is_valid(site: Path) -> None:
    config = load_config(write(site, BASE))
    assert config.agent.state_dir == site / "state"  # relative to the config file
    assert config.platform.identity_file == site / "id_ed25519"
    assert config.platform.poll_interval == timedelta(seconds=30)
    assert config.platform.sftp.port == 2222
    assert config.targets.databases["main"].url == f"sqlite:///{site / 'main.db'}"
    assert config.targets.shares["files"].file_mode == 0o640
    assert config.targets.shares["files"].dir_mode == 0o750
    assert config_warnings(config) == []


def test_typo_key_names_file_line_and_suggestion(site: Path) -> None:
    path = write(site, BASE.replace("  poll_interval: 30s", "  pol_interval: 30s"))
    assert errors_of(path) == [f"{path}:11 platform.pol_interval: unknown key; did you mean 'poll_interval'?"]


def test_unknown_section(site: Path) -> None:
    path = write(site, BASE + "reportng:\n  heartbeat_interval: 1m\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:21 reportng: unknown key; did you mean 'reporting'?")


def test_bad_duration(site: Path) -> None:
    path = write(site, BASE.replace("poll_interval: 30s", "poll_interval: 30 seconds"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:11 platform.poll_interval: expected a duration like 30s, 5m")


def test_bare_number_is_not_a_duration(site: Path) -> None:
    path = write(site, BASE.replace("poll_interval: 30s", "poll_interval: 30"))
    (error,) = errors_of(path)
    assert "platform.poll_interval: expected a duration" in error and "no unit" in error


def test_missing_file_reference(site: Path) -> None:
    (site / "platform.json").unlink()
    path = write(site, BASE)
    assert errors_of(path) == [f"{path}:10 platform.public_keys: file not found: {site / 'platform.json'}"]


def test_inline_password_is_refused_without_echoing_it(site: Path) -> None:
    path = write(site, BASE.replace("main: sqlite:///main.db", "main: postgresql+psycopg://u:hunter2@db/edu"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:14 targets.databases.main: inline password in the database URL")
    assert "hunter2" not in error


def test_inline_password_in_url_query_is_refused(site: Path) -> None:
    text = BASE.replace(
        "    main: sqlite:///main.db", "    main:\n      url: mysql+pymysql://u@db/edu?password=hunter2"
    )
    (error,) = errors_of(write(site, text))
    assert ":15 targets.databases.main.url: inline password" in error
    assert "hunter2" not in error


def test_inline_password_in_platform_url(site: Path) -> None:
    path = write(site, BASE.replace("sftp://agent1@", "sftp://agent1:hunter2@"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:7 platform.url: inline password")
    assert "hunter2" not in error


def test_all_errors_are_listed_at_once(site: Path) -> None:
    text = (
        BASE.replace("id: school-1", "id: school 1")
        .replace("poll_interval: 30s", "poll_interval: soon")
        .replace("default_share: files", "default_share: nowhere")
        + "logging:\n  level: loud\n  colour: true\n"
    )
    errors = errors_of(write(site, text))
    keys = [e.split(" ")[1].rstrip(":") for e in errors]
    assert keys == [
        "agent.id",
        "platform.poll_interval",
        "subscriptions.default_share",
        "logging.level",
        "logging.colour",
    ]
    assert [int(e.split(" ")[0].rsplit(":", 1)[1]) for e in errors] == [2, 11, 20, 22, 23]


def test_missing_required_keys_point_at_their_section(site: Path) -> None:
    text = BASE.replace(f"  host_key: {HOST_KEY}\n", "").replace("  public_keys: platform.json\n", "")
    errors = [e.split(" ", 1)[1] for e in errors_of(write(site, text))]
    assert errors == [
        "platform.host_key: required for sftp: pin the platform's SSH host key",
        "platform.public_keys: required key is missing",
    ]
    text = BASE.replace(f"  host_key: {HOST_KEY}\n", "")
    (error,) = errors_of(write(site, text))  # reported once, not by two checks
    assert error.endswith(":5 platform.host_key: required for sftp: pin the platform's SSH host key")


def test_yaml_syntax_error_has_a_line(site: Path) -> None:
    path = write(site, BASE.replace("  poll_interval: 30s", "  poll_interval: [30s"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:12: invalid YAML")


def test_duplicate_keys_aliases_and_merge_keys_are_refused(site: Path) -> None:
    text = BASE + "reporting: &r\n  heartbeat_interval: 1m\n  heartbeat_interval: 2m\naudit: *r\n"
    errors = errors_of(write(site, text))
    assert any(":23 reporting.heartbeat_interval: duplicate key" in e for e in errors)
    assert any(":24 audit: YAML aliases" in e for e in errors)
    text = BASE + "reporting:\n  <<: {heartbeat_interval: 1m}\n"
    assert any(":22 reporting: YAML merge keys" in e for e in errors_of(write(site, text)))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", ":1: the file is empty"),
        ("- a\n- b\n", ":1: expected a mapping of sections"),
        ("agent: {id: x}\n", ":1 platform: required key is missing"),
    ],
)
def test_degenerate_documents(site: Path, content: str, expected: str) -> None:
    assert any(expected in e for e in errors_of(write(site, content)))


def test_absurd_nesting(site: Path) -> None:
    (error,) = errors_of(write(site, "agent: " + "[" * 100_000 + "]" * 100_000 + "\n"))
    assert error.endswith(": invalid YAML: nested too deeply")


def test_not_utf8(site: Path) -> None:
    path = site / "config.yaml"
    path.write_bytes(BASE.encode() + b"# \xff\n")
    assert errors_of(path) == [f"{path}:21: not valid UTF-8"]


def test_unreadable_config_file(tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path / "nope.yaml")
    assert "cannot read the config file" in error


def test_keys_are_text_as_written(site: Path) -> None:
    """``no:`` or ``1001:`` as override ids stay the ids written, not False or an int."""
    text = BASE + "  overrides:\n    no: {table: t_no}\n    0123: {table: t_0123}\n"
    config = load_config(write(site, text))
    assert set(config.subscriptions.overrides) == {"no", "0123"}


# ------------------------------------------------------------------ platform


def test_host_key_forms(site: Path) -> None:
    for line in (f"'[exchange.example]:2222 {HOST_KEY} platform@edu'", f"exchange.example {HOST_KEY}"):
        config = load_config(write(site, BASE.replace(f"host_key: {HOST_KEY}", f"host_key: {line}")))
        assert config.platform.host_key == HOST_KEY
    assert config.platform.host_key_fingerprint == "SHA256:696Ri9O4SGIeyRIxCHMHbEjJPaEYjvddux+ndTbDhfg"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ssh-ed25519", "expected a pinned host key"),
        ("ssh-ed25519 not*base64", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKca", "wrong length"),
        ("ecdsa-sha2-nistp256 " + HOST_KEY.split()[1], "is a 'ssh-ed25519' key, not 'ecdsa-sha2-nistp256'"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "expected a pinned host key"),
    ],
)
def test_bad_host_keys(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_host_key(line)


def test_sftp_needs_identity_and_host_key(site: Path) -> None:
    text = BASE.replace(f"  host_key: {HOST_KEY}\n", "").replace("  identity_file: id_ed25519\n", "")
    errors = errors_of(write(site, text))
    assert [e.split(" ", 1)[1] for e in errors] == [
        "platform.host_key: required for sftp: pin the platform's SSH host key",
        "platform.identity_file: required for sftp: the agent's SSH private key file",
    ]


@pytest.mark.parametrize(
    "url", ["sftp://127.0.0.1/", "sftp://u@/x", "ftp://u@h/", "sftp://u@h:99999/", "sftp://u@h/?x=1"]
)
def test_bad_sftp_urls(site: Path, url: str) -> None:
    (error,) = errors_of(write(site, BASE.replace("sftp://agent1@127.0.0.1:2222/", url)))
    assert ":7 platform.url: " in error


def test_local_transport_relative_directory(site: Path) -> None:
    (site / "exchange").mkdir()
    text = BASE.replace("transport: sftp", "transport: local").replace(
        "sftp://agent1@127.0.0.1:2222/", "exchange"
    )
    config = load_config(write(site, text))
    assert config.platform.local_dir == site / "exchange"
    text = text.replace("url: exchange", "url: missing-dir")
    (error,) = errors_of(write(site, text))
    assert error.endswith(f":7 platform.url: the platform directory does not exist: {site / 'missing-dir'}")


def test_identity_file_must_be_an_unencrypted_private_key(site: Path) -> None:
    shutil.copy(IDENTITY.with_suffix(".pub"), site / "id_ed25519")
    (error,) = errors_of(write(site, BASE))
    assert ":9 platform.identity_file: not an SSH private key" in error and "is it the .pub file?" in error
    (site / "id_ed25519").unlink()
    (site / "id_ed25519.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(site / "id_ed25519")],
        check=True,
    )
    (error,) = errors_of(write(site, BASE))
    assert ":9 platform.identity_file: the key is passphrase-protected" in error


def test_agent_keys_are_checked_against_the_agent_id(site: Path) -> None:
    shutil.rmtree(site / "keys")
    (site / "keys").mkdir()
    config = load_config(write(site, BASE))
    (message,) = [str(w).split(" ", 1)[1] for w in config_warnings(config)]
    assert message == (
        f"agent.keys_dir: no keys in {site / 'keys'} yet: "
        f"run edu-agent keys init --dir {site / 'keys'} --id school-1"
    )
    shutil.rmtree(site / "keys")
    init_keys(site / "keys", "another-school")
    config = load_config(write(site, BASE))
    (message,) = [str(w).split(" ", 1)[1] for w in config_warnings(config)]
    assert message == f"agent.id: the keys in {site / 'keys'} were made for 'another-school', not 'school-1'"
    shutil.rmtree(site / "keys")
    init_keys(site / "keys", "school-1")
    assert config_warnings(load_config(write(site, BASE))) == []
    shutil.copy(site / "keys" / "bundle.json", site / "platform.json")
    (message,) = [str(w).split(" ", 1)[1] for w in config_warnings(load_config(write(site, BASE)))]
    assert message == "platform.public_keys: this is the agent's own bundle, not the platform's"


def test_public_keys_must_be_a_bundle(site: Path) -> None:
    (site / "platform.json").write_text('{"format": "something else"}')
    (error,) = errors_of(write(site, BASE))
    assert ":10 platform.public_keys: not a usable public key bundle" in error


# ------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("500ms", 0.5),
        ("1h 5s", 3605),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "5 minutes", "1m1h", "1h1h", "0s", "-5s", "1.5h", "s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@settings(deadline=None)  # timing varies on a shared CI machine
@given(st.integers(min_value=1, max_value=10**8))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MiB", 512 * 2**20), ("10GB", 10 * 10**9), ("1.5GiB", 3 * 2**29), ("100B", 100), ("4 KiB", 4096)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["512", "10G", "10 gb", "1.5.5MB", "0B", "MiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@settings(deadline=None)  # timing varies on a shared CI machine
@given(st.integers(min_value=1, max_value=2**50))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


@settings(deadline=None)  # timing varies on a shared CI machine
@given(st.text(max_size=20))
def test_parsers_only_raise_value_error(text: str) -> None:
    for parse in (parse_duration, parse_size):
        with contextlib.suppress(ValueError):
            parse(text)


def test_bad_size_in_config(site: Path) -> None:
    text = BASE + "reporting:\n  max_queue_size: 256\n"
    (error,) = errors_of(write(site, text))
    assert ":22 reporting.max_queue_size: expected a size like 512MiB, 10GB" in error


@pytest.mark.parametrize(
    ("written", "mode"), [("0640", 0o640), ('"640"', 0o640), ("0o600", 0o600), ("750", 0o750)]
)
def test_modes_are_octal_however_written(site: Path, written: str, mode: int) -> None:
    text = BASE.replace("      path: share\n", f"      path: share\n      file_mode: {written}\n")
    assert load_config(write(site, text)).targets.shares["files"].file_mode == mode


@pytest.mark.parametrize(
    ("written", "message"), [("4755", "setuid"), ("0999", "octal"), ("rw-r-----", "octal")]
)
def test_bad_modes(site: Path, written: str, message: str) -> None:
    text = BASE.replace("      path: share\n", f"      path: share\n      dir_mode: {written}\n")
    (error,) = errors_of(write(site, text))
    assert ":18 targets.shares.files.dir_mode: " in error and message in error


def test_share_owner_and_group_must_exist(site: Path) -> None:
    text = BASE.replace("      path: share\n", "      path: share\n      owner: root\n      group: root\n")
    assert load_config(write(site, text)).targets.shares["files"].owner == "root"
    text = BASE.replace("      path: share\n", "      path: share\n      owner: no-such-user-x\n")
    (error,) = errors_of(write(site, text))
    assert error.endswith(":18 targets.shares.files.owner: no such user on this machine: no-such-user-x")


# ------------------------------------------------------------------ secrets


def _with_password(site: Path, ref: str) -> Path:
    return write(
        site, BASE.replace("    main: sqlite:///main.db", f"    main:\n      url: sqlite:///main.db\n{ref}")
    )


def test_password_file(site: Path) -> None:
    (site / "db.pw").write_text("s3cret-value\n")
    (site / "db.pw").chmod(0o600)
    database = load_config(_with_password(site, "      password_file: db.pw\n")).targets.databases["main"]
    url = database.url_with_secret()
    assert url.password == "s3cret-value"
    assert "s3cret-value" not in str(url) and "s3cret-value" not in repr(url)


def test_password_env_and_credential(site: Path, tmp_path: Path) -> None:
    config = load_config(_with_password(site, "      password_env: EDU_TEST_DB_PW\n"))
    ref = config.targets.databases["main"].password_source
    assert ref is not None
    with pytest.raises(SecretError, match="EDU_TEST_DB_PW is not set"):
        ref.resolve({})
    assert ref.resolve({"EDU_TEST_DB_PW": "from-env"}) == "from-env"

    config = load_config(_with_password(site, "      password_credential: db-main\n"))
    ref = config.targets.databases["main"].password_source
    assert ref is not None
    with pytest.raises(SecretError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        ref.resolve({})
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "db-main").write_text("from-credential")
    assert ref.resolve({"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == "from-credential"
    assert (
        config.targets.databases["main"]
        .url_with_secret({"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
        .password
        == "from-credential"
    )


def test_empty_secret_is_an_error(site: Path) -> None:
    (site / "db.pw").write_text("\n")
    database = load_config(_with_password(site, "      password_file: db.pw\n")).targets.databases["main"]
    with pytest.raises(SecretError, match="is empty"):
        database.url_with_secret()


def test_only_one_secret_source(site: Path) -> None:
    (site / "db.pw").write_text("x")
    path = _with_password(site, "      password_file: db.pw\n      password_env: DB_PW\n")
    (error,) = errors_of(path)
    assert error.endswith(
        ":17 targets.databases.main.password_env: "
        "give only one of password_file, password_env, password_credential"
    )


def test_missing_password_file(site: Path) -> None:
    (error,) = errors_of(_with_password(site, "      password_file: nope.pw\n"))
    assert error.endswith(f":16 targets.databases.main.password_file: file not found: {site / 'nope.pw'}")


def test_repr_never_shows_resolved_secrets(site: Path) -> None:
    (site / "db.pw").write_text("very-secret-pw")
    config = load_config(_with_password(site, "      password_file: db.pw\n"))
    config.targets.databases["main"].url_with_secret()
    assert "very-secret-pw" not in repr(config)
    assert "very-secret-pw" not in str(config)


def test_metrics_needs_a_token_when_enabled(site: Path) -> None:
    (error,) = errors_of(write(site, BASE + "metrics:\n  enabled: true\n"))
    assert error.endswith(
        ":21 metrics.token_file: required when metrics are enabled: set one of "
        "token_file, token_env, token_credential"
    )
    config = load_config(
        write(site, BASE + "metrics:\n  enabled: true\n  token_env: T\n  listen: '[::1]:9000'\n")
    )
    assert config.metrics.address == ("::1", 9000)
    assert config.metrics.token_source is not None and config.metrics.token_source.kind == "env"


def test_warnings(site: Path) -> None:
    (site / "id_ed25519").chmod(0o644)
    (site / "db.pw").write_text("x")
    (site / "db.pw").chmod(0o644)
    shutil.rmtree(site / "share")
    config = load_config(_with_password(site, "      password_file: db.pw\n"))
    warnings = [w.split(" ", 1)[1] for w in map(str, config_warnings(config, environ={}))]
    assert warnings == [
        "platform.identity_file: private key is open to others (mode 0644); use 0600",
        "targets.databases.main.password_file: "
        "secret file is readable by everyone (mode 0644); use 0600 or 0640",
        f"targets.shares.files.path: share directory does not exist yet: {site / 'share'}",
    ]


# ------------------------------------------------------------------ subscriptions


def test_resolver(site: Path) -> None:
    (site / "archive").mkdir()
    text = BASE.replace(
        "  shares:\n", "    reports: sqlite:///reports.db\n  shares:\n    archive: {path: archive}\n"
    ) + (
        "  overrides:\n"
        "    papers: {target: reports, table: t_paper}\n"
        "    renamed: {table: t_renamed}\n"
        "    photos: {target: archive, directory: photos}\n"
    )
    config = load_config(write(site, text))
    target = config.resolve("anything", "table")
    assert isinstance(target, TableTarget)
    assert (target.database_name, target.table) == ("main", None)
    target = config.resolve("papers", "table")
    assert isinstance(target, TableTarget)
    assert (target.database_name, target.table) == ("reports", "t_paper")
    assert target.database.url.endswith("reports.db")
    target = config.resolve("renamed", "table")
    assert isinstance(target, TableTarget)
    assert (target.database_name, target.table) == ("main", "t_renamed")
    target = config.resolve("photos", "file")
    assert isinstance(target, DirectoryTarget)
    assert (target.share_name, target.directory, target.share.path) == ("archive", "photos", site / "archive")
    with pytest.raises(UnmappedSubscription, match="override names a directory"):
        config.resolve("photos", "table")
    with pytest.raises(ValueError, match="unknown provision method"):
        config.resolve("x", "interface")


def test_unmapped_subscription_is_reported(site: Path) -> None:
    text = BASE.replace("  default_database: main\n", "")
    config = load_config(write(site, text))
    with pytest.raises(UnmappedSubscription, match="maps to no database"):
        config.resolve("teacher-papers", "table")
    assert isinstance(config.resolve("teacher-papers", "file"), DirectoryTarget)


def test_override_references_are_checked(site: Path) -> None:
    text = BASE + (
        "  overrides:\n"
        "    a: {target: nowhere}\n"
        "    b: {target: main, directory: d}\n"
        "    c: {target: files, table: t}\n"
        '    d: {directory: "../escape"}\n'
        "    e: {}\n"
    )
    errors = [e.split(" ", 1)[1] for e in errors_of(write(site, text))]
    assert errors == [
        "subscriptions.overrides.a.target: no database or share named 'nowhere' in targets",
        "subscriptions.overrides.b.target: 'main' is a database, but this override names a directory",
        "subscriptions.overrides.c.target: 'files' is a share, but this override names a table",
        "subscriptions.overrides.d.directory: "
        "expected one directory name inside the share (no '/', not '.' or '..')",
        "subscriptions.overrides.e.target: an override needs target, table or directory",
    ]


def test_unknown_dialect(site: Path) -> None:
    (error,) = errors_of(write(site, BASE.replace("sqlite:///main.db", "nosuchdb://h/x")))
    assert ":14 targets.databases.main: unknown database dialect 'nosuchdb'" in error


def test_broken_dialect_package(site: Path) -> None:
    """A dialect installed but unable to import (dmSQLAlchemy on SQLAlchemy 2.1): an error, not a crash."""
    from sqlalchemy.dialects import registry

    registry.register("edubroken", "tests.no_such_dialect_module", "Dialect")
    (error,) = errors_of(write(site, BASE.replace("sqlite:///main.db", "edubroken://h/x")))
    assert ":14 targets.databases.main: database dialect 'edubroken' cannot be loaded: " in error


def test_locate(site: Path) -> None:
    config = load_config(write(site, BASE))
    assert config.locate("platform", "poll_interval") == f"{site / 'config.yaml'}:11 platform.poll_interval"
    assert os.fspath(config.source_path or "") == str(site / "config.yaml")


# ------------------------------------------------------------------ the YAML loader itself

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
)
_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_教职工", min_size=1, max_size=8)
_documents = st.dictionaries(
    _keys,
    st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, min_size=1, max_size=3),
        max_leaves=12,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(_documents)
def test_loader_reads_what_yaml_reads_and_knows_each_line(data: dict[str, object]) -> None:
    import yaml

    from agent.config import _parse_yaml

    text = yaml.safe_dump(data, allow_unicode=True, default_flow_style=False, sort_keys=False)
    document = _parse_yaml(text, "x.yaml")
    assert document.problems == []
    assert document.data == yaml.safe_load(text)
    lines = text.splitlines()
    for key in data:
        written = lines[document.lines[(key,)] - 1]
        assert written.lstrip("'\"").startswith(key), (key, written)


def _paths(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    return out


_BASE_PATHS = _paths(__import__("yaml").safe_load(BASE))
_any_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_BASE_PATHS), value=_any_value)
def test_any_value_anywhere_gives_located_errors_or_a_config(
    site: Path, path: tuple[str, ...], value: object
) -> None:
    """Bad input of every kind: a ConfigError with file:line for each problem, never a crash."""
    import yaml

    data = yaml.safe_load(BASE)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    config_path = site / "fuzz.yaml"
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_config(config_path)
    except ConfigError as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.file == str(config_path) and isinstance(error.line, int) and error.message
