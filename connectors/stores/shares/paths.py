"""Path rules for names chosen by the sender.

The sender is not trusted to name paths (tarfile CVE-2007-4559, rsync
CVE-2024-12087/12088). A path is accepted only in one canonical form: relative,
``/``-separated, no empty, ``.`` or ``..`` component, nothing a Windows/SMB
client of the share would reinterpret, and nothing invisible. The hub runs the
same rules before publishing, so a path is refused at the source too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from connectors.stores.shares.errors import (
    AbsolutePathError,
    BackslashError,
    ControlCharacterError,
    DotComponentError,
    DrivePathError,
    EmptyComponentError,
    NameCollisionError,
    NameTooLongError,
    ParentTraversalError,
    PathConflictError,
    PathTooLongError,
    ReservedNameError,
    WindowsUnsafeNameError,
)

MAX_COMPONENT_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, tmpfs
MAX_PATH_BYTES = 1024  # leaves room under PATH_MAX (4096) for the share root
MAX_DEPTH = 32

#: The agent's metadata directory inside every subscription directory.
META_DIRNAME = ".edu-sync"

# Unicode categories never allowed: Cc control (NUL, C0, DEL, C1), Cf invisible
# formatting (bidi overrides, zero-width), Cs lone surrogates (undecodable bytes),
# Zl/Zp line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_WINDOWS_FORBIDDEN_CHARS = frozenset('<>:"|?*')
_WINDOWS_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in "123456789¹²³"]
    + [f"LPT{i}" for i in "123456789¹²³"]
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def collision_key(path: str) -> str:
    """The form under which two names are the same file for some client or filesystem.

    NFKC folds compatibility forms (full-width letters, ligatures) and composes
    NFD; casefold handles case-insensitive filesystems and SMB clients.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", path).casefold())


def _check_component(path: str, name: str) -> None:
    if name == "":
        raise EmptyComponentError(path)
    if name == "..":
        raise ParentTraversalError(path)
    if name == ".":
        raise DotComponentError(path)
    if not _PRINTABLE_ASCII.fullmatch(name):  # printable ASCII needs no per-character lookup
        for ch in name:
            if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
                raise ControlCharacterError(path, f"U+{ord(ch):04X}")
    if ":" in name:
        raise DrivePathError(path, "':' names a drive or an NTFS stream")
    bad = sorted(set(name) & _WINDOWS_FORBIDDEN_CHARS)
    if bad:
        raise WindowsUnsafeNameError(path, f"character {''.join(bad)!r}")
    if name.endswith((".", " ")):
        raise WindowsUnsafeNameError(path, "trailing dot or space")
    stem = name.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_DEVICE_NAMES:
        raise WindowsUnsafeNameError(path, f"device name {stem}")
    if len(name.encode("utf-8")) > MAX_COMPONENT_BYTES:
        raise NameTooLongError(path, f"{len(name.encode('utf-8'))} bytes > {MAX_COMPONENT_BYTES}")


def validate_path(path: object) -> str:
    """Return ``path`` if it is a safe relative file path, else raise the specific error."""
    if not isinstance(path, str):
        raise ControlCharacterError(repr(path), "path is not a string")
    if path.startswith(("//", "\\\\")):
        raise DrivePathError(path, "UNC path")
    if _DRIVE.match(path):
        raise DrivePathError(path)
    if "\\" in path:
        raise BackslashError(path)
    if path.startswith("/"):
        raise AbsolutePathError(path)
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ControlCharacterError(path, "not encodable as UTF-8") from exc
    parts = path.split("/")
    for name in parts:
        _check_component(path, name)
        folded = unicodedata.normalize("NFKC", name)
        if folded != name:  # e.g. U+2025 '‥' becomes '..', U+FF0F '／' becomes '/'
            if "/" in folded:
                raise ParentTraversalError(path, "a '/' lookalike becomes a separator under NFKC")
            _check_component(path, folded)
    if len(encoded) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise PathTooLongError(path, f"{len(encoded)} bytes, {len(parts)} components")
    if collision_key(parts[0]) == collision_key(META_DIRNAME):
        raise ReservedNameError(path)
    return path


def validate_dirname(name: object) -> str:
    """A subscription's directory name (from local config): one safe, non-hidden component."""
    checked = validate_path(name)
    if "/" in checked:
        raise PathConflictError(checked, "a subscription directory is a single path component")
    if checked.startswith("."):
        raise ReservedNameError(checked, "a subscription directory may not be hidden")
    return checked


def check_collisions(paths: Iterable[str]) -> None:
    """Raise if two paths are the same name for some client, or a file is also a directory."""
    seen: dict[str, str] = {}
    for path in paths:
        key = collision_key(path)
        other = seen.get(key)
        if other is not None:
            raise NameCollisionError(path, f"collides with {other!r}")
        seen[key] = path
    for key, path in seen.items():
        parent = key
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if parent in seen:
                raise PathConflictError(path, f"{seen[parent]!r} is a file but also a directory of it")
