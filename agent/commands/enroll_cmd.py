"""`edu-agent enroll -c FILE`: what the platform's operators need to register this agent, and
whether what they sent back (their public keys, their SSH host key) is in the config.

Enrollment comes before a complete config (the platform's keys arrive only after the agent is
registered), so the agent's identity is read from the ``agent`` and ``platform`` sections on
their own, and the full validation is reported afterwards. The registration bundle is signed
with the agent's signing key: the operators can check that whoever sent it holds the key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from agent import __version__, exitcodes
from agent.config import AgentSection, ConfigError, load_config, parse_host_key
from protocol.errors import KeysError
from protocol.keys import PartyKeys, load_bundle, load_keys

ENROLLMENT_FORMAT = "edu-sync-enrollment-1"


@dataclass
class Enrollment:
    """The registration bundle, and every problem found on the way."""

    document: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)  # config incomplete: exit 78
    failures: list[str] = field(default_factory=list)  # keys missing/unreadable: exit 1
    checks: list[str] = field(default_factory=list)  # what was verified, for the reader


def register(subparsers: Any) -> None:
    from agent.cli import add_config_option

    parser = subparsers.add_parser(
        "enroll",
        help="print the registration bundle for the platform and check the platform's keys",
        description=(
            "Print this agent's registration bundle (agent id, public signing and encryption keys, "
            "SSH public key; signed by the agent) for the platform's operators, then check that the "
            "platform's public keys and SSH host key are set in the config. Exit 0 when enrolled, "
            "78 when the config still lacks what the platform sends back, 1 when the agent's own "
            "keys are missing or unreadable."
        ),
    )
    add_config_option(parser)
    parser.add_argument(
        "--json", action="store_true", help="print only the JSON bundle (for a file or a pipe)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    enrollment = enroll(Path(args.config))
    if args.json:  # stdout is the bundle alone; what is wrong goes to stderr
        if enrollment.document is not None:
            print(json.dumps(enrollment.document, ensure_ascii=False, indent=2, sort_keys=True))
        for message in enrollment.failures + enrollment.problems:
            print(f"edu-agent enroll: {message}", file=sys.stderr)
    else:
        print(render(enrollment))
    if enrollment.failures:
        return exitcodes.FAILURE
    return exitcodes.CONFIG if enrollment.problems else exitcodes.OK


def enroll(config_path: Path) -> Enrollment:
    result = Enrollment()
    raw = _read_raw(config_path, result)
    if raw is None:
        return result
    base_dir = config_path.absolute().parent
    agent = _agent_section(config_path, raw, base_dir, result)
    section = raw.get("platform")
    platform: dict[str, Any] = section if isinstance(section, dict) else {}
    if agent is None:
        return result
    keys = _agent_keys(agent, result)
    if keys is None:
        return result
    ssh_public = _ssh_public_key(platform, base_dir, agent.id, result)
    result.document = sign(bundle_document(keys, ssh_public), keys)
    _check_platform(config_path, platform, base_dir, result)
    return result


def _read_raw(config_path: Path, result: Enrollment) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except OSError as exc:
        result.failures.append(f"cannot read the config file {config_path}: {exc.strerror}")
        return None
    except (yaml.YAMLError, UnicodeDecodeError):
        result.problems.extend(_config_errors(config_path))
        return None
    if not isinstance(data, dict):
        result.problems.append(f"{config_path}: expected a mapping of sections (agent, platform, ...)")
        return None
    return data


def _agent_section(
    path: Path, raw: dict[str, Any], base_dir: Path, result: Enrollment
) -> AgentSection | None:
    try:
        return AgentSection.model_validate(raw.get("agent"), context={"base_dir": base_dir})
    except ValidationError:
        # The full loader locates each problem with file:line key.
        result.problems.extend(e for e in _config_errors(path) if " agent" in e or "agent." in e)
        if not result.problems:
            result.problems.append(f"{path}: the agent section is invalid")
        return None


def _agent_keys(agent: AgentSection, result: Enrollment) -> PartyKeys | None:
    keys_dir = agent.keys_dir
    if not (keys_dir / "bundle.json").exists():
        result.failures.append(
            f"no agent keys in {keys_dir}: create them with "
            f"`edu-agent keys init --dir {keys_dir} --id {agent.id}`"
        )
        return None
    try:
        keys = load_keys(keys_dir)
    except KeysError as exc:
        result.failures.append(f"the agent's keys in {keys_dir} cannot be used: {exc}")
        return None
    if keys.party_id != agent.id:
        result.failures.append(
            f"the keys in {keys_dir} belong to {keys.party_id!r}, but agent.id is {agent.id!r}: "
            "point agent.keys_dir at this agent's keys, or create new ones"
        )
        return None
    result.checks.append(f"agent keys: {keys_dir} (matching bundle.json, private keys 0600)")
    return keys


def _ssh_public_key(
    platform: dict[str, Any], base_dir: Path, agent_id: str, result: Enrollment
) -> str | None:
    value = platform.get("identity_file")
    if platform.get("transport") != "sftp" and value is None:
        return None  # a local transport needs no SSH identity
    if not isinstance(value, str) or not value:
        result.problems.append(
            "platform.identity_file is not set: the agent needs an SSH key to log in to the platform "
            "(install.sh creates /etc/edu-agent/keys/ssh_ed25519)"
        )
        return None
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        result.failures.append(f"cannot read the SSH identity {path}: {exc.strerror}")
        return None
    except (ValueError, TypeError) as exc:
        result.failures.append(f"{path} is not an unencrypted OpenSSH private key: {exc}")
        return None
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    result.checks.append(f"SSH identity: {path}")
    return f"{public.decode('ascii')} edu-agent@{agent_id}"


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a public key line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def bundle_document(keys: PartyKeys, ssh_public: str | None) -> dict[str, Any]:
    return {
        "format": ENROLLMENT_FORMAT,
        "agent_id": keys.party_id,
        "agent_version": __version__,
        "hostname": socket.gethostname(),
        "keys": keys.public_bundle().to_dict(),
        "ssh_public_key": ssh_public,
        "ssh_key_fingerprint": ssh_fingerprint(ssh_public) if ssh_public else None,
    }


def _signed_bytes(document: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(document: dict[str, Any], keys: PartyKeys) -> dict[str, Any]:
    """Add an Ed25519 signature over the canonical JSON (sorted keys, no spaces) of the rest."""
    signature = keys.signing_key.sign(_signed_bytes(document))
    return {**document, "signature": base64.b64encode(signature).decode("ascii")}


def verify_signature(document: dict[str, Any]) -> bool:
    """Check a registration bundle's self-signature against the signing key it carries."""
    from cryptography.exceptions import InvalidSignature

    from protocol.keys import PublicBundle

    try:
        bundle = PublicBundle.from_dict(document["keys"])
        bundle.signing_key().verify(base64.b64decode(document["signature"]), _signed_bytes(document))
    except (KeyError, KeysError, InvalidSignature, ValueError):
        return False
    return bundle.party_id == document.get("agent_id")


def _check_platform(path: Path, platform: dict[str, Any], base_dir: Path, result: Enrollment) -> None:
    public_keys = platform.get("public_keys")
    if not isinstance(public_keys, str) or not public_keys:
        result.problems.append(
            "platform.public_keys is not set: save the platform's public key bundle (JSON) and name it there"
        )
    else:
        file = Path(public_keys) if Path(public_keys).is_absolute() else base_dir / public_keys
        try:
            bundle = load_bundle(file)
            result.checks.append(
                f"platform keys: {file} (party {bundle.party_id}, signing key {bundle.signing_key_id[:16]}…)"
            )
        except KeysError as exc:
            result.problems.append(f"platform.public_keys: {exc} (the platform operators send this file)")
    if platform.get("transport", "sftp") == "sftp":
        host_key = platform.get("host_key")
        if not isinstance(host_key, str) or not host_key.strip():
            result.problems.append(
                "platform.host_key is not set: pin the platform's SSH host key "
                "(a line like 'ssh-ed25519 AAAA…' from the platform operators)"
            )
        else:
            try:
                _, blob = parse_host_key(host_key)
                digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
                result.checks.append(f"platform host key: SHA256:{digest}")
            except ValueError as exc:
                result.problems.append(f"platform.host_key: {exc}")
    if not result.problems:
        # Everything enrollment needs is there; anything else wrong is still worth saying.
        result.problems.extend(_config_errors(path))


def _config_errors(path: Path) -> list[str]:
    try:
        load_config(path)
    except ConfigError as exc:
        return [str(issue) for issue in exc.errors]
    return []


def render(enrollment: Enrollment) -> str:
    """The readable form: what to hand over, then what was checked."""
    lines: list[str] = []
    doc = enrollment.document
    if doc is not None:
        keys = doc["keys"]
        lines += [
            f"Registration bundle of agent {doc['agent_id']} (edu-agent {doc['agent_version']}, "
            f"host {doc['hostname']})",
            f"  signing key     ed25519  {keys['signing_public_key']}",
            f"                  key id   {keys['signing_key_id']}",
            f"  encryption key  x25519   {keys['encryption_public_key']}",
            f"                  key id   {keys['encryption_key_id']}",
            f"  SSH public key  {doc['ssh_public_key'] or '(none: local transport)'}",
        ]
        if doc["ssh_key_fingerprint"]:
            lines.append(f"                  {doc['ssh_key_fingerprint']}")
        lines += [
            "",
            "Send the JSON below to the platform's operators (or: edu-agent enroll --json > FILE).",
            "Compare the key ids with them by phone before they register it.",
            json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=True),
        ]
    lines.append("")
    lines += [f"ok    {check}" for check in enrollment.checks]
    lines += [f"FAIL  {failure}" for failure in enrollment.failures]
    lines += [f"TODO  {problem}" for problem in enrollment.problems]
    if not enrollment.failures and not enrollment.problems:
        lines.append(
            "Enrolled: the platform's keys and host key are set; next: edu-agent config check --online"
        )
    return "\n".join(lines)
