"""Exchange directory layout: per-agent directories and package file names.

The platform's exchange server keeps one directory per agent::

    <agent-id>/inbox/     packages for the agent (snapshot, delta, files, revoke)
    <agent-id>/outbox/    packages from the agent (report, receipt, request)
    <agent-id>/control/   the signed subscription list and revocations

A package file is named ``<channel>.<sequence:012d>.<package-id>.pkg``, where the
channel is the subscription id (or a control channel such as ``subscriptions``), so
a lexical sort of a directory listing is sequence order per channel.  Writers upload
to a temporary name (:func:`temp_name`, starts with a dot, ends in ``.tmp``) and
rename; readers only look at names :func:`parse_package_name` accepts, so they
never see a partial file.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from protocol.errors import LayoutError

INBOX = "inbox"
OUTBOX = "outbox"
CONTROL = "control"
DIRECTORIES = (INBOX, OUTBOX, CONTROL)

#: Control channels (file name prefixes inside ``control/``).
SUBSCRIPTIONS_CHANNEL = "subscriptions"
REVOCATIONS_CHANNEL = "revocations"

PACKAGE_SUFFIX = ".pkg"
TEMP_SUFFIX = ".tmp"
SEQUENCE_DIGITS = 12
MAX_SEQUENCE = 10**SEQUENCE_DIGITS - 1

# Ids appear in file and directory names: a conservative charset, no dots (the field
# separator), no leading punctuation (no hidden files, no option-like names), bounded.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_PACKAGE_ID_RE = re.compile(r"[0-9a-f]{32}")
_NAME_RE = re.compile(
    r"(?P<channel>[A-Za-z0-9][A-Za-z0-9_-]{0,63})"
    r"\.(?P<sequence>[0-9]{12})"
    r"\.(?P<package_id>[0-9a-f]{32})"
    r"\.pkg"
)


def validate_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a safe party/subscription/channel id, else raise LayoutError."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise LayoutError(
            f"invalid {what} {value!r}: must be 1-64 characters of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit"
        )
    return value


def validate_package_id(value: object) -> str:
    if not isinstance(value, str) or not _PACKAGE_ID_RE.fullmatch(value):
        raise LayoutError(f"invalid package id {value!r}: must be 32 lowercase hex digits")
    return value


def validate_sequence(value: object, what: str = "sequence") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQUENCE:
        raise LayoutError(f"invalid {what} {value!r}: must be an integer 0..{MAX_SEQUENCE}")
    return value


def new_package_id() -> str:
    """A fresh random package id (128 bits, lowercase hex)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, order=True)
class PackageName:
    """A parsed package file name; ordering is (channel, sequence, package id)."""

    channel: str
    sequence: int
    package_id: str

    @property
    def filename(self) -> str:
        return package_filename(self.channel, self.sequence, self.package_id)


def package_filename(channel: str, sequence: int, package_id: str) -> str:
    """``<channel>.<sequence:012d>.<package-id>.pkg`` after validating every part."""
    validate_id(channel, "subscription/channel id")
    validate_sequence(sequence)
    validate_package_id(package_id)
    return f"{channel}.{sequence:0{SEQUENCE_DIGITS}d}.{package_id}{PACKAGE_SUFFIX}"


def parse_package_name(name: str) -> PackageName:
    """Parse a package file name; anything else (temp names, junk, paths) raises LayoutError."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise LayoutError(
            f"not a package file name: {name!r} (expected <channel>.<sequence:012d>.<package-id>.pkg)"
        )
    return PackageName(match["channel"], int(match["sequence"]), match["package_id"])


def temp_name(final_name: str) -> str:
    """The name a writer uses before its atomic rename to ``final_name``."""
    if "/" in final_name or final_name.startswith("."):
        raise LayoutError(f"invalid final name for a temporary file: {final_name!r}")
    return f".{final_name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def sorted_packages(names: Iterable[str]) -> tuple[list[PackageName], list[str]]:
    """Split a directory listing into packages in (channel, sequence) order and foreign names.

    Temporary names are skipped silently (an upload in progress); other names that are
    not packages are returned so the caller can report them.
    """
    packages: list[PackageName] = []
    foreign: list[str] = []
    for name in names:
        if is_temp_name(name):
            continue
        try:
            packages.append(parse_package_name(name))
        except LayoutError:
            foreign.append(name)
    packages.sort()
    return packages, sorted(foreign)


@dataclass(frozen=True)
class AgentExchange:
    """The exchange directories of one agent, relative to the exchange root.

    On the SFTP server an agent is chrooted into its own directory, so the agent side
    uses ``AgentExchange(PurePosixPath("."))``; the hub uses ``for_agent(root, agent_id)``.
    """

    root: PurePosixPath

    @classmethod
    def for_agent(cls, exchange_root: PurePosixPath | str, agent_id: str) -> AgentExchange:
        return cls(PurePosixPath(exchange_root) / validate_id(agent_id, "agent id"))

    @property
    def inbox(self) -> PurePosixPath:
        return self.root / INBOX

    @property
    def outbox(self) -> PurePosixPath:
        return self.root / OUTBOX

    @property
    def control(self) -> PurePosixPath:
        return self.root / CONTROL
