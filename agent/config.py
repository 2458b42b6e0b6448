"""The agent's configuration: one YAML file turned into a typed, validated `AgentConfig`.

Why it is strict: the file is edited by hand on machines whose operators may not be able
to debug a daemon, so every mistake is reported at once with ``file:line key.path``,
unknown keys are rejected as typos, durations and sizes carry their units, and secrets
are never written in the file itself (only a reference: a file, an environment variable
or a systemd credential). Relative paths resolve against the config file's directory.

Offline validation (``edu-agent config check``) checks the document, the references
between its sections, and that every file the agent must *read* exists (keys, secret
files, the platform's public keys). Directories the agent *writes* (state, keys, shares,
caches) may not exist yet: they are reported as warnings. Secrets from environment
variables or credentials are only resolved when used (and by ``config check --online``).
"""

from __future__ import annotations

import base64
import difflib
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import stat
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import sqlalchemy as sa
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from agent.logsetup import register_secret

DEFAULT_CONFIG_PATH = Path("/etc/edu-agent/config.yaml")
MAX_CONFIG_BYTES = 1 << 20
MAX_SECRET_BYTES = 64 << 10

KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One located problem: ``file:line key.path: message``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every located problem."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class SecretError(Exception):
    """A secret reference could not be resolved (the message never contains the secret)."""


class UnmappedSubscription(LookupError):
    """A subscription maps to no local target: it is reported, never guessed."""


class _FieldErrors(ValueError):
    """Raised by model validators to report problems on named keys of that model."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))
        self.problems = problems


# --------------------------------------------------------------------------- YAML with lines


class _SourceInt(int):
    """An int that remembers how it was written (so ``file_mode: 640`` reads as octal)."""

    source: str

    def __new__(cls, value: int, source: str) -> _SourceInt:
        obj = super().__new__(cls, value)
        obj.source = source
        return obj


class LineLoader(yaml.SafeLoader):
    """SafeLoader that keeps every node's mark; `_build` turns nodes into data + line map."""


@dataclass
class _Document:
    data: Any
    lines: dict[KeyPath, int]
    problems: list[tuple[KeyPath, int, str]]


_OMITTED = object()  # a value already reported as a problem: left out of the data


def _build(loader: LineLoader, node: yaml.Node) -> _Document:
    """Construct plain data from a composed node tree, recording the line of every key.

    Mapping keys stay the text that was written (``no:`` is the key "no", not False);
    duplicate keys, aliases and merge keys are reported instead of silently resolved.
    """
    lines: dict[KeyPath, int] = {(): node.start_mark.line + 1}
    problems: list[tuple[KeyPath, int, str]] = []
    seen: set[int] = set()

    def walk(n: yaml.Node, path: KeyPath) -> Any:
        if isinstance(n, (yaml.MappingNode, yaml.SequenceNode)):
            if id(n) in seen:
                line = lines.get(path, n.start_mark.line + 1)
                problems.append((path, line, "YAML aliases (*name) are not supported"))
                return _OMITTED
            seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in n.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    problems.append((path, line, "YAML merge keys (<<) are not supported"))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    problems.append((path, line, "keys must be plain names"))
                    continue
                key = key_node.value
                child: KeyPath = (*path, key)
                if key in result:
                    problems.append((child, line, "duplicate key (the earlier value would be lost)"))
                lines[child] = line
                value = walk(value_node, child)
                if value is not _OMITTED:
                    result[key] = value
            return result
        if isinstance(n, yaml.SequenceNode):
            items = []
            for index, item in enumerate(n.value):
                child = (*path, index)
                lines[child] = item.start_mark.line + 1
                value = walk(item, child)
                if value is not _OMITTED:
                    items.append(value)
            return items
        value = loader.construct_object(n, deep=True)
        if isinstance(value, int) and not isinstance(value, bool):
            return _SourceInt(value, n.value)
        return value

    return _Document(walk(node, ()), lines, problems)


def _parse_yaml(text: str, file: str) -> _Document:
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError([ConfigIssue(file, 1, "", "the file is empty")])
        return _build(loader, node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {message}")]) from None
    except RecursionError:
        raise ConfigError([ConfigIssue(file, None, "", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- value types

_DURATION_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_PART = re.compile(r"(\d+)(ms|w|d|h|m|s)")
_DURATION_HINT = "expected a duration like 30s, 5m, 1h30m, 2d"


def parse_duration(text: str) -> timedelta:
    """``30s``, ``5m``, ``1h30m``, ``2d``, ``500ms`` → timedelta (units largest first, each once)."""
    compact = text.replace(" ", "")
    parts = list(_DURATION_PART.finditer(compact))
    if not compact or "".join(m.group(0) for m in parts) != compact:
        raise ValueError(_DURATION_HINT)
    order = list(_DURATION_UNITS)
    positions = [order.index(m.group(2)) for m in parts]
    if positions != sorted(set(positions)):
        raise ValueError(f"{_DURATION_HINT} (units largest first, each once)")
    seconds = sum(int(m.group(1)) * _DURATION_UNITS[m.group(2)] for m in parts)
    if seconds <= 0:
        raise ValueError("the duration must be greater than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration` for whole seconds (used in summaries)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return f"{int(value.total_seconds() * 1000)}ms"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


_SIZE_UNITS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)")
_SIZE_HINT = "expected a size like 512MiB, 10GB (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"


def parse_size(text: str) -> int:
    """``512MiB``, ``10GB``, ``1.5GiB`` → bytes. A bare number is refused: say the unit."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(_SIZE_HINT)
    size = round(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise ValueError("the size must be greater than zero")
    return size


def format_size(size: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B"


def _to_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"{_DURATION_HINT} (a bare number has no unit)")


def _to_size(value: Any) -> int:
    if isinstance(value, str):
        return parse_size(value)
    if isinstance(value, int) and not isinstance(value, (bool, _SourceInt)):
        return value  # set from code, already in bytes
    raise ValueError(f"{_SIZE_HINT} (a bare number has no unit)")


def _to_mode(value: Any) -> int:
    """File modes are octal however they are written: ``0640``, ``640``, ``"0o640"``."""
    if isinstance(value, _SourceInt):
        text = value.source
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool):
        text = oct(value)  # set from code as an int
    else:
        raise ValueError('expected an octal file mode like "0640"')
    digits = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", digits):
        raise ValueError('expected an octal file mode like "0640"')
    mode = int(digits, 8)
    if mode & ~0o777:
        raise ValueError("setuid, setgid and sticky bits are not allowed; use permission bits only")
    return mode


def _to_text(value: Any) -> Any:
    """Plain ints written in YAML may stand for names (``id: 1001``): keep them as written."""
    return value.source if isinstance(value, _SourceInt) else value


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    if str(value) in ("", "."):
        raise ValueError("expected a path")
    return value if value.is_absolute() else Path(os.path.normpath(_base_dir(info).absolute() / value))


def _readable_file(value: Path) -> Path:
    if not value.exists():
        raise ValueError(f"file not found: {value}")
    if not value.is_file():
        raise ValueError(f"not a regular file: {value}")
    if not os.access(value, os.R_OK):
        raise ValueError(f"not readable by this user: {value}")
    return value


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "expected a name of letters, digits, '.', '_', '-' (at most 64, starting alphanumeric)"
        )
    return value


def _ssh_private_key(value: Path) -> Path:
    """Catch the classic mistakes (the .pub file, a passphrase) before the first connection."""
    import paramiko

    encrypted = "the key is passphrase-protected; the agent needs an unencrypted key (0600)"
    try:
        paramiko.PKey.from_path(value)
    except paramiko.PasswordRequiredException:
        raise ValueError(encrypted) from None
    except TypeError as exc:  # paramiko's way of saying so for OpenSSH-format keys
        if "password" not in str(exc):
            raise
        raise ValueError(encrypted) from None
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise ValueError(
            f"not an SSH private key ({type(exc).__name__}; is it the .pub file?): {value}"
        ) from None
    return value


def _party_id(value: str) -> str:
    """The agent's id is a party id of the exchange protocol (it names directories on the platform)."""
    from protocol.errors import LayoutError
    from protocol.layout import validate_id

    try:
        return validate_id(value, "agent id")
    except LayoutError:
        raise ValueError(
            "expected 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        ) from None


def _public_bundle(value: Path) -> Path:
    """The platform's public keys must parse now, not at the first package."""
    from protocol.errors import KeysError
    from protocol.keys import load_bundle

    try:
        load_bundle(value)
    except KeysError as exc:
        raise ValueError(f"not a usable public key bundle: {exc}") from None
    return value


def _user_exists(value: str) -> str:
    if not value.isdigit():
        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ValueError(f"no such user on this machine: {value}") from None
    return value


def _group_exists(value: str) -> str:
    if not value.isdigit():
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError(f"no such group on this machine: {value}") from None
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("expected an environment variable name like EDU_DB_PASSWORD")
    return value


def _credential_name(value: str) -> str:
    if not value or "/" in value or value in (".", "..") or "\0" in value:
        raise ValueError("expected a systemd credential name (no '/')")
    return value


def _table_name(value: str) -> str:
    if not value.strip() or any(ord(c) < 32 for c in value) or len(value) > 128:
        raise ValueError("expected a table name (1-128 characters, no control characters)")
    return value


def _directory_name(value: str) -> str:
    if value in ("", ".", "..") or "/" in value or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError("expected one directory name inside the share (no '/', not '.' or '..')")
    return value


def _split_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if match is None:
        raise ValueError("expected host:port like 127.0.0.1:9464 or [::1]:9464")
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError("the port must be from 1 to 65535")
    return match.group(1) or match.group(3), port


def _listen_address(value: str) -> str:
    _split_address(value)
    return value


def _no_url_password(value: str) -> str:
    if urlsplit(value).password is not None:
        raise ValueError("inline password in the URL; the agent authenticates with identity_file")
    return value


def _to_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(_to_text(value)), strict=False)
    except ValueError:
        raise ValueError("expected an IP address or CIDR like 10.0.0.0/8 or ::1") from None


Duration = Annotated[timedelta, BeforeValidator(_to_duration)]
Size = Annotated[int, BeforeValidator(_to_size)]
Mode = Annotated[int, BeforeValidator(_to_mode)]
Text = Annotated[str, BeforeValidator(_to_text)]
Name = Annotated[str, BeforeValidator(_to_text), AfterValidator(_name)]
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
ReadableFile = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_readable_file)]
EnvName = Annotated[str, AfterValidator(_env_name)]
CredentialName = Annotated[str, AfterValidator(_credential_name)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_to_network)]


# --------------------------------------------------------------------------- secrets

_SECRETISH = re.compile(r"pass|pwd|token|secret|credential|private|key_material", re.IGNORECASE)


@dataclass(frozen=True)
class SecretRef:
    """Where a secret comes from: ``file`` (a path), ``env`` (a variable), ``credential``."""

    kind: Literal["file", "env", "credential"]
    name: str

    def describe(self) -> str:
        return {"file": "file", "env": "environment variable", "credential": "systemd credential"}[
            self.kind
        ] + f" {self.name}"

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """Read the secret now (never cached). Raises `SecretError`.

        The value is registered with the log redactor, so even a driver error that echoes
        it is masked in the log.
        """
        value = self._read(os.environ if environ is None else environ)
        register_secret(value)
        return value

    def _read(self, env: Mapping[str, str]) -> str:
        if self.kind == "env":
            value = env.get(self.name)
            if value is None:
                raise SecretError(f"environment variable {self.name} is not set")
            return _nonempty(value, self)
        if self.kind == "credential":
            directory = env.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise SecretError(
                    f"systemd credential {self.name}: $CREDENTIALS_DIRECTORY is not set "
                    "(credentials exist only inside the service, see LoadCredential=)"
                )
            return _read_secret_file(Path(directory) / self.name, self)
        return _read_secret_file(Path(self.name), self)

    def available(self, environ: Mapping[str, str] | None = None) -> str | None:
        """None when the secret resolves here, else why not."""
        try:
            self.resolve(environ)
        except SecretError as exc:
            return str(exc)
        return None


def _read_secret_file(path: Path, ref: SecretRef) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"{ref.describe()}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"{ref.describe()}: larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{ref.describe()}: not UTF-8 text") from None
    return _nonempty(text.rstrip("\r\n"), ref)


def _nonempty(value: str, ref: SecretRef) -> str:
    if not value:
        raise SecretError(f"{ref.describe()} is empty")
    return value


def _secret_ref(owner: BaseModel, prefix: str) -> SecretRef | None:
    """The one secret source set among ``{prefix}_file``/``_env``/``_credential``."""
    for kind in ("file", "env", "credential"):
        value = getattr(owner, f"{prefix}_{kind}")
        if value is not None:
            return SecretRef(kind, str(value))
    return None


def _one_secret_source(owner: BaseModel, prefix: str, required: str | None) -> None:
    keys = [f"{prefix}_{kind}" for kind in ("file", "env", "credential")]
    given = [key for key in keys if getattr(owner, key) is not None]
    if len(given) > 1:
        raise _FieldErrors([(given[1], f"give only one of {', '.join(keys)}")])
    if not given and required:
        raise _FieldErrors([(keys[0], f"{required}: set one of {', '.join(keys)}")])


# --------------------------------------------------------------------------- the model


@dataclass
class _Source:
    path: Path
    lines: dict[KeyPath, int]
    data: Any

    def issue(self, loc: Iterable[str | int], message: str, line: int | None = None) -> ConfigIssue:
        """Locate a message at the deepest key of ``loc`` that exists in the file (or at ``line``)."""
        at = line
        shown: list[str | int] = []
        line = self.lines.get(())
        node = self.data
        for part in loc:
            if isinstance(node, dict):
                shown.append(part)
                if part not in node:
                    break
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                shown.append(part)
                node = node[part]
            else:
                break
            line = self.lines.get(tuple(shown), line)
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in shown).lstrip(".")
        return ConfigIssue(str(self.path), line if at is None else at, key, message)


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # No secret is ever stored in the model (only references), but a repr may end
        # up in a log: mask anything secret-looking defensively.
        for name, value in super().__repr_args__():
            if name and _SECRETISH.search(name) and not name.endswith(("_file", "_env", "_credential")):
                yield name, "***" if value is not None else None
            else:
                yield name, value


class AgentSection(_Section):
    """Who this agent is and where it keeps its state and its own keys."""

    id: Annotated[str, BeforeValidator(_to_text), AfterValidator(_party_id)]
    state_dir: ConfigPath = Path("/var/lib/edu-agent")
    keys_dir: ConfigPath = Path("/etc/edu-agent/keys")


@dataclass(frozen=True)
class SftpEndpoint:
    username: str
    host: str
    port: int
    path: str


_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


def parse_host_key(line: str) -> tuple[str, bytes]:
    """``[host] keytype base64 [comment]`` (a known_hosts line) → (keytype, key blob).

    The blob must decode and name the same key type inside (SSH wire format), so a
    truncated or pasted-wrong key is caught before the first connection.
    """
    fields = line.split()
    start = next((i for i, f in enumerate(fields) if f in _KEY_TYPES), None)
    if start is None or start > 1 or len(fields) < start + 2:
        raise ValueError(
            "expected a pinned host key like 'ssh-ed25519 AAAAC3Nza…' (a known_hosts line; "
            "key types: " + ", ".join(_KEY_TYPES) + ")"
        )
    key_type, encoded = fields[start], fields[start + 1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("the host key is not valid base64") from None
    if len(blob) < 4:
        raise ValueError("the host key is truncated")
    name_len = int.from_bytes(blob[:4], "big")
    inner = blob[4 : 4 + name_len].decode("ascii", "replace")
    if inner != key_type:
        raise ValueError(f"the host key's data is a {inner!r} key, not {key_type!r}")
    if key_type == "ssh-ed25519" and len(blob) != 4 + name_len + 4 + 32:
        raise ValueError("the ssh-ed25519 host key has the wrong length (truncated?)")
    return key_type, blob


_SFTP_REQUIRED = {
    "host_key": "required for sftp: pin the platform's SSH host key",
    "identity_file": "required for sftp: the agent's SSH private key file",
}


def _normalize_host_key(value: str) -> str:
    """Keep ``keytype base64`` of a known_hosts line (host pattern and comment dropped)."""
    key_type, blob = parse_host_key(value)
    return f"{key_type} {base64.b64encode(blob).decode()}"


class PlatformSection(_Section):
    """The connection to the platform's exchange directory and the platform's identity."""

    transport: Literal["sftp", "local"]
    url: Annotated[Text, AfterValidator(_no_url_password)]
    host_key: Annotated[Text, AfterValidator(_normalize_host_key)] | None = None
    identity_file: Annotated[ReadableFile, AfterValidator(_ssh_private_key)] | None = None
    public_keys: Annotated[ReadableFile, AfterValidator(_public_bundle)]
    poll_interval: Duration = timedelta(minutes=1)
    connect_timeout: Duration = timedelta(seconds=30)
    operation_timeout: Duration = timedelta(minutes=2)
    keepalive_interval: Duration = timedelta(seconds=30)

    @model_validator(mode="before")
    @classmethod
    def _local_url_relative_to_config(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and data.get("transport") == "local" and isinstance(data.get("url"), str):
            raw = data["url"].removeprefix("file://")
            if raw and not raw.startswith("/"):
                data = {**data, "url": str(_base_dir(info).absolute() / raw)}
        return data

    @model_validator(mode="after")
    def _check_transport(self) -> PlatformSection:
        problems: list[tuple[str, str]] = []
        if self.transport == "sftp":
            try:
                _ = self.sftp
            except ValueError as exc:
                problems.append(("url", str(exc)))
            problems.extend((k, m) for k, m in _SFTP_REQUIRED.items() if getattr(self, k) is None)
        else:
            local = self.local_dir
            if not local.is_dir():
                problems.append(("url", f"the platform directory does not exist: {local}"))
        if problems:
            raise _FieldErrors(problems)
        return self

    @property
    def sftp(self) -> SftpEndpoint:
        """``sftp://user@host:port/path`` split up (ValueError if it is not one)."""
        parts = urlsplit(self.url)
        if parts.scheme != "sftp":
            raise ValueError("expected sftp://user@host[:port]/[path] for transport sftp")
        if parts.password is not None:
            raise ValueError("inline password in the URL; the agent authenticates with identity_file")
        if not parts.hostname or not parts.username:
            raise ValueError("expected sftp://user@host[:port]/[path]: user and host are required")
        if parts.query or parts.fragment:
            raise ValueError("query and fragment are not allowed in the platform URL")
        try:
            port = parts.port or 22
        except ValueError:
            raise ValueError("the port must be a number from 1 to 65535") from None
        return SftpEndpoint(parts.username, parts.hostname, port, parts.path or "/")

    @property
    def local_dir(self) -> Path:
        """The exchange directory for transport ``local`` (made absolute at load)."""
        return Path(self.url.removeprefix("file://"))

    @property
    def host_key_fingerprint(self) -> str | None:
        """OpenSSH-style ``SHA256:…`` fingerprint of the pinned host key."""
        if self.host_key is None:
            return None
        _, blob = parse_host_key(self.host_key)
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _check_database_url(value: str, info: ValidationInfo) -> str:
    try:
        url = sa.make_url(value)
    except sa.exc.ArgumentError:
        raise ValueError("not a SQLAlchemy URL (expected dialect+driver://user@host:port/database)") from None
    if url.password is not None or any(_SECRETISH.search(k) for k in url.query):
        raise ValueError(
            "inline password in the database URL; use password_file, password_env or password_credential"
        )
    try:
        url.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ValueError(
            f"unknown database dialect {url.drivername!r} (is the driver's extra installed, "
            "e.g. edu-sync-agent[postgresql]?)"
        ) from None
    except ImportError as exc:  # installed, but broken against this SQLAlchemy (docs/dependencies.md)
        raise ValueError(f"database dialect {url.drivername!r} cannot be loaded: {exc}") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = url.database or ""
        if not database.startswith("file:") and not Path(database).is_absolute():
            url = url.set(database=str(_base_dir(info).absolute() / database))
    return url.render_as_string(hide_password=False)


class Database(_Section):
    """A named local database. The URL carries no password; the password comes from one reference."""

    url: Annotated[str, AfterValidator(_check_database_url)]
    password_file: ReadableFile | None = None
    password_env: EnvName | None = None
    password_credential: CredentialName | None = None

    @model_validator(mode="before")
    @classmethod
    def _url_shorthand(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_password(self) -> Database:
        _one_secret_source(self, "password", required=None)
        return self

    @property
    def password_source(self) -> SecretRef | None:
        return _secret_ref(self, "password")

    @property
    def dialect(self) -> str:
        return sa.make_url(self.url).get_backend_name()

    def url_with_secret(self, environ: Mapping[str, str] | None = None) -> sa.URL:
        """The URL with its password filled in. A `sqlalchemy.URL` masks it in str()/repr()."""
        url = sa.make_url(self.url)
        source = self.password_source
        return url if source is None else url.set(password=source.resolve(environ))


class Share(_Section):
    """A named share directory; file subscriptions write into subdirectories of it."""

    path: ConfigPath
    file_mode: Mode = 0o640
    dir_mode: Mode = 0o750
    owner: Annotated[Text, AfterValidator(_user_exists)] | None = None
    group: Annotated[Text, AfterValidator(_group_exists)] | None = None
    verified_cache: ConfigPath | None = None
    free_space_margin: Size = 64 << 20


class TargetsSection(_Section):
    """Named local targets. Names are how subscriptions refer to them."""

    databases: dict[Name, Database] = Field(default_factory=dict)
    shares: dict[Name, Share] = Field(default_factory=dict)


class SubscriptionOverride(_Section):
    """Where one subscription goes, when not to the defaults (or under another name)."""

    target: Name | None = None
    table: Annotated[Text, AfterValidator(_table_name)] | None = None
    directory: Annotated[Text, AfterValidator(_directory_name)] | None = None

    @model_validator(mode="after")
    def _meaningful(self) -> SubscriptionOverride:
        if self.table is not None and self.directory is not None:
            raise _FieldErrors([("directory", "give table (table subscription) or directory, not both")])
        if self.target is None and self.table is None and self.directory is None:
            raise _FieldErrors([("target", "an override needs target, table or directory")])
        return self


class SubscriptionsSection(_Section):
    default_database: Name | None = None
    default_share: Name | None = None
    overrides: dict[Text, SubscriptionOverride] = Field(default_factory=dict)


class ReportingSection(_Section):
    heartbeat_interval: Duration = timedelta(minutes=5)
    max_queue_size: Size = 256 << 20


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _lowercase_level(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("level"), str):
            data = {**data, "level": data["level"].lower()}
        return data


class MetricsSection(_Section):
    """Opt-in Prometheus listener: bearer token plus address allow-list (第二十七条 interface rules)."""

    enabled: bool = False
    listen: Annotated[Text, AfterValidator(_listen_address)] = "127.0.0.1:9464"
    token_file: ReadableFile | None = None
    token_env: EnvName | None = None
    token_credential: CredentialName | None = None
    allow: list[Network] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")]
    )

    @model_validator(mode="after")
    def _check(self) -> MetricsSection:
        problems: list[tuple[str, str]] = []
        try:
            required = "required when metrics are enabled" if self.enabled else None
            _one_secret_source(self, "token", required=required)
        except _FieldErrors as exc:
            problems.extend(exc.problems)
        if self.enabled and not self.allow:
            problems.append(("allow", "an empty allow-list would refuse every client"))
        if problems:
            raise _FieldErrors(problems)
        return self

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to listen on."""
        return _split_address(self.listen)

    @property
    def token_source(self) -> SecretRef | None:
        return _secret_ref(self, "token")


class AuditSection(_Section):
    path: ConfigPath | None = None


@dataclass(frozen=True)
class TableTarget:
    """A table subscription's destination. ``table`` None: use the name the platform declares."""

    subscription_id: str
    database_name: str
    database: Database
    table: str | None


@dataclass(frozen=True)
class DirectoryTarget:
    """A file subscription's destination. ``directory`` None: use the name the platform declares."""

    subscription_id: str
    share_name: str
    share: Share
    directory: str | None


Target = Union[TableTarget, DirectoryTarget]  # noqa: UP007 (runtime alias on Python 3.10)


class AgentConfig(_Section):
    """The whole configuration file. Build it with `load_config`."""

    agent: AgentSection
    platform: PlatformSection
    targets: TargetsSection = Field(default_factory=TargetsSection)
    subscriptions: SubscriptionsSection = Field(default_factory=SubscriptionsSection)
    reporting: ReportingSection = Field(default_factory=ReportingSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    audit: AuditSection = Field(default_factory=AuditSection)

    _source: _Source | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        """The file this config was loaded from."""
        return None if self._source is None else self._source.path

    @property
    def audit_path(self) -> Path:
        return self.audit.path or self.agent.state_dir / "audit.log"

    def resolve(self, subscription_id: str, provision_method: str) -> Target:
        """Where a subscription's data goes. Raises `UnmappedSubscription` if nowhere."""
        return resolve_subscription(self, subscription_id, provision_method)

    def locate(self, *key: str | int) -> str:
        """``file:line key.path`` for messages about a key of this config."""
        issue = (self._source or _Source(Path("<config>"), {}, {})).issue(key, "")
        where = issue.file if issue.line is None else f"{issue.file}:{issue.line}"
        return f"{where} {issue.key}"


def resolve_subscription(config: AgentConfig, subscription_id: str, provision_method: str) -> Target:
    """Map a subscription to a local target: override first, then the default for its kind."""
    if provision_method not in ("table", "file"):
        raise ValueError(f"unknown provision method {provision_method!r} (expected 'table' or 'file')")
    override = config.subscriptions.overrides.get(subscription_id)
    kind = "database" if provision_method == "table" else "share"
    subs = config.subscriptions
    default = subs.default_database if kind == "database" else subs.default_share
    name = override.target if override is not None and override.target is not None else default
    if override is not None and provision_method == "table" and override.directory is not None:
        raise UnmappedSubscription(
            f"subscription {subscription_id} is a table subscription but its override names a directory"
        )
    if override is not None and provision_method == "file" and override.table is not None:
        raise UnmappedSubscription(
            f"subscription {subscription_id} is a file subscription but its override names a table"
        )
    if name is None:
        raise UnmappedSubscription(
            f"subscription {subscription_id} ({provision_method}) maps to no {kind}: "
            f"add subscriptions.overrides.{subscription_id}.target or subscriptions.default_{kind}"
        )
    if provision_method == "table":
        database = config.targets.databases.get(name)
        if database is None:
            raise UnmappedSubscription(f"subscription {subscription_id}: no database named {name!r}")
        return TableTarget(subscription_id, name, database, override.table if override else None)
    share = config.targets.shares.get(name)
    if share is None:
        raise UnmappedSubscription(f"subscription {subscription_id}: no share named {name!r}")
    return DirectoryTarget(subscription_id, name, share, override.directory if override else None)


# --------------------------------------------------------------------------- locating errors


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model_at(loc: Iterable[str | int]) -> type[BaseModel] | None:
    current: Any = AgentConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _messages(error: Mapping[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    """A pydantic error → (key path, plain message) pairs, never echoing the input value."""
    loc: KeyPath = tuple(error["loc"])
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldErrors):
        for key, message in cause.problems:
            yield (*loc, key), message
    elif kind == "missing":
        yield loc, "required key is missing"
    elif kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = list(model.model_fields) if model else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        if guess:
            hint = f"; did you mean {guess[0]!r}?"
        else:
            hint = f" (known keys: {', '.join(known)})" if known else ""
        yield loc, f"unknown key{hint}"
    elif cause is not None:
        yield loc, str(cause)
    elif kind == "literal_error":
        yield loc, f"expected one of {error['ctx']['expected']}"
    elif kind in ("model_type", "dict_type"):
        yield loc, "expected a mapping of keys"
    elif kind == "list_type":
        yield loc, "expected a list"
    elif kind == "string_type":
        yield loc, "expected text (quote it)"
    elif kind.startswith("bool"):
        yield loc, "expected true or false"
    else:
        yield loc, str(error["msg"])


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _cross_references(data: Any) -> Iterator[tuple[KeyPath, str]]:
    """References between sections, checked on the raw data so they are reported even
    when other parts of the file are still wrong."""
    if not isinstance(data, dict):
        return
    platform = _mapping(data.get("platform"))
    if platform.get("transport") == "sftp":
        for key, message in _SFTP_REQUIRED.items():
            if platform.get(key) is None:
                yield ("platform", key), message
    targets = _mapping(data.get("targets"))
    databases = _mapping(targets.get("databases"))
    shares = _mapping(targets.get("shares"))
    subs = _mapping(data.get("subscriptions"))
    default_db, default_share = subs.get("default_database"), subs.get("default_share")
    if isinstance(default_db, str) and default_db not in databases:
        yield ("subscriptions", "default_database"), f"no database named {default_db!r} in targets.databases"
    if isinstance(default_share, str) and default_share not in shares:
        yield ("subscriptions", "default_share"), f"no share named {default_share!r} in targets.shares"
    overrides = _mapping(subs.get("overrides"))
    for sid, override in overrides.items():
        if not isinstance(override, dict):
            continue
        target, table, directory = override.get("target"), override.get("table"), override.get("directory")
        where = ("subscriptions", "overrides", sid, "target")
        if isinstance(target, str):
            if target not in databases and target not in shares:
                yield where, f"no database or share named {target!r} in targets"
            elif table is not None and target not in databases:
                yield where, f"{target!r} is a share, but this override names a table"
            elif directory is not None and target not in shares:
                yield where, f"{target!r} is a database, but this override names a directory"
        elif table is not None and not isinstance(default_db, str):
            yield where, "no database for this table: set target or subscriptions.default_database"
        elif directory is not None and not isinstance(default_share, str):
            yield where, "no share for this directory: set target or subscriptions.default_share"


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate a config file. Raises `ConfigError` listing every problem."""
    file = Path(path)
    shown = str(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        problem = f"cannot read the config file: {exc.strerror}"
        raise ConfigError([ConfigIssue(shown, None, "", problem)]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue(shown, None, "", f"larger than {MAX_CONFIG_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(shown, line, "", "not valid UTF-8")]) from None

    document = _parse_yaml(text, shown)
    source = _Source(Path(shown), document.lines, document.data)
    issues = [source.issue(key, message, line) for key, line, message in document.problems]
    if not isinstance(document.data, dict):
        issues.append(ConfigIssue(shown, 1, "", "expected a mapping of sections (agent, platform, ...)"))
        raise ConfigError(issues)
    config: AgentConfig | None = None
    try:
        config = AgentConfig.model_validate(document.data, context={"base_dir": file.absolute().parent})
    except ValidationError as exc:
        for error in exc.errors():
            issues.extend(source.issue(loc, message) for loc, message in _messages(error))
    issues.extend(source.issue(loc, message) for loc, message in _cross_references(document.data))
    if issues or config is None:
        issues = sorted(set(issues), key=lambda i: (i.line or 0, i.key, i.message))
        raise ConfigError(issues)
    config._source = source
    return config


def config_warnings(config: AgentConfig, environ: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    """Things that are valid but likely wrong on this machine right now."""
    warnings: list[ConfigIssue] = []
    source = config._source or _Source(Path("<config>"), {}, {})

    def warn(key: KeyPath, message: str) -> None:
        warnings.append(source.issue(key, message))

    for key, directory in (
        (("agent", "state_dir"), config.agent.state_dir),
        (("agent", "keys_dir"), config.agent.keys_dir),
    ):
        if not directory.is_dir():
            warn(key, f"directory does not exist yet: {directory}")
    warnings.extend(source.issue(key, message) for key, message in _key_warnings(config))
    if config.platform.identity_file is not None:
        mode = stat.S_IMODE(config.platform.identity_file.stat().st_mode)
        if mode & 0o077:
            warn(("platform", "identity_file"), f"private key is open to others (mode {mode:04o}); use 0600")
    for name, database in config.targets.databases.items():
        _warn_secret(warn, ("targets", "databases", name, "password"), database.password_source, environ)
    if config.metrics.enabled:
        _warn_secret(warn, ("metrics", "token"), config.metrics.token_source, environ)
    for name, share in config.targets.shares.items():
        if not share.path.is_dir():
            warn(("targets", "shares", name, "path"), f"share directory does not exist yet: {share.path}")
    subs = config.subscriptions
    if subs.default_database is None and subs.default_share is None and not subs.overrides:
        warn(("subscriptions",), "no default target and no override: every subscription will be unmapped")
    return warnings


def _key_warnings(config: AgentConfig) -> Iterator[tuple[KeyPath, str]]:
    """The agent's own keys: present, and made for this agent id."""
    from protocol.errors import KeysError
    from protocol.keys import BUNDLE_FILE, load_bundle

    keys_dir = config.agent.keys_dir
    if not keys_dir.is_dir():
        return
    if not (keys_dir / BUNDLE_FILE).exists():
        yield (
            ("agent", "keys_dir"),
            (f"no keys in {keys_dir} yet: run edu-agent keys init --dir {keys_dir} --id {config.agent.id}"),
        )
        return
    try:
        own = load_bundle(keys_dir / BUNDLE_FILE)
        platform = load_bundle(config.platform.public_keys)
    except KeysError as exc:
        yield ("agent", "keys_dir"), f"cannot read the agent's public bundle: {exc}"
        return
    if own.party_id != config.agent.id:
        yield (
            ("agent", "id"),
            f"the keys in {keys_dir} were made for {own.party_id!r}, not {config.agent.id!r}",
        )
    if platform.signing_public_key == own.signing_public_key:
        yield ("platform", "public_keys"), "this is the agent's own bundle, not the platform's"


def _warn_secret(warn: Any, key: KeyPath, ref: SecretRef | None, environ: Mapping[str, str] | None) -> None:
    if ref is None:
        return
    where = (*key[:-1], f"{key[-1]}_{ref.kind}")
    if ref.kind == "file":
        mode = stat.S_IMODE(Path(ref.name).stat().st_mode)
        if mode & 0o007:
            warn(where, f"secret file is readable by everyone (mode {mode:04o}); use 0600 or 0640")
        return
    problem = ref.available(environ)
    if problem is not None:
        warn(where, f"not resolvable here ({problem}); it is read when used")
