"""Errors of the share store.

Two families, because the caller must treat them differently:

* :class:`PackageRejected` — the package itself is bad (unsafe path, wrong size,
  wrong hash, out of order...). Nothing was written; the caller quarantines
  the package and reports it.
* :class:`ShareEnvironmentError` — the package may be fine but the local side
  cannot take it now (disk full, a symlink planted in the destination, a
  directory owned by someone else). Nothing of the previous state was lost;
  the caller reports it and retries later.
"""

from __future__ import annotations


class ShareError(Exception):
    """Base of every share-store error."""


# --- the package is bad: quarantine -------------------------------------------------------


class PackageRejected(ShareError):
    """The package must not be applied (quarantine and report it)."""


class ManifestFormatError(PackageRejected):
    """The manifest section is not the documented JSON structure."""


class UnsafePathError(PackageRejected):
    """A path named by the sender breaks a path rule; ``path`` is the offending value."""

    rule = "unsafe path"

    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        self.detail = detail
        text = f"{self.rule}: {path!r}"
        super().__init__(f"{text} ({detail})" if detail else text)


class AbsolutePathError(UnsafePathError):
    rule = "absolute path"


class ParentTraversalError(UnsafePathError):
    rule = "'..' component (parent traversal)"


class DotComponentError(UnsafePathError):
    rule = "'.' component (path not in canonical form)"


class EmptyComponentError(UnsafePathError):
    rule = "empty path component"


class DrivePathError(UnsafePathError):
    rule = "drive letter, UNC path or alternate data stream"


class BackslashError(UnsafePathError):
    rule = "backslash in path"


class ControlCharacterError(UnsafePathError):
    rule = "NUL, control or invisible formatting character in path"


class WindowsUnsafeNameError(UnsafePathError):
    rule = "name that SMB/Windows clients of the share cannot represent"


class NameTooLongError(UnsafePathError):
    rule = "path component too long"


class PathTooLongError(UnsafePathError):
    rule = "path too long or too deep"


class ReservedNameError(UnsafePathError):
    rule = "name reserved for the agent's own metadata"


class NameCollisionError(UnsafePathError):
    rule = "names collide under case folding or Unicode normalisation"


class PathConflictError(UnsafePathError):
    rule = "path is both a file and a directory, or both written and removed"


class UnknownRemovedPathError(UnsafePathError):
    rule = "removed path is not in the current file set"


class UnsupportedEntryTypeError(PackageRejected):
    """A manifest entry is not a regular file (symlink, hardlink, device, FIFO...)."""

    def __init__(self, path: str, entry_type: object) -> None:
        self.path = path
        self.entry_type = entry_type
        super().__init__(f"entry {path!r} has type {entry_type!r}; only regular files are ever created")


class CountMismatchError(PackageRejected):
    """Counts or byte totals in the header disagree with the manifest."""


class SizeLimitError(PackageRejected):
    """A declared size or count is beyond the store's limits."""


class PayloadTooShortError(PackageRejected):
    """The plaintext ended before the bytes the manifest declares."""


class PayloadTooLongError(PackageRejected):
    """The plaintext holds bytes beyond the last manifest entry (an undeclared file)."""


class FileDigestMismatchError(PackageRejected):
    """A file's content does not have the SHA-256 its manifest entry declares."""

    def __init__(self, path: str, expected: str, found: str) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(f"{path!r}: SHA-256 {found} does not match the manifest's {expected}")


class WrongPackageKindError(PackageRejected):
    """The header is not a ``files`` package for this subscription."""


class ExpectedDigestError(PackageRejected):
    """The manifest applied to its own base does not give the digest the header promises."""


class BaseMismatchError(PackageRejected):
    """The package builds on a sequence this subscription is not at (a gap: hold it, never apply)."""


# --- the local side cannot take it now: report and retry -------------------------------


class ShareEnvironmentError(ShareError):
    """The destination cannot take the package now; the previous state is intact."""


class InvalidShareConfigError(ShareEnvironmentError):
    """Local configuration for the share is unusable (bad mode, bad directory name...)."""


class ForeignDirectoryError(ShareEnvironmentError):
    """The subscription directory exists but belongs to something else (no or another marker)."""


class UnsafeDestinationError(ShareEnvironmentError):
    """Something in the destination (a symlink, a file where a directory belongs) blocks a path.

    It is never followed or replaced silently; the path is named so an operator can look.
    """

    def __init__(self, path: str, found: str) -> None:
        self.path = path
        self.found = found
        super().__init__(f"destination path {path!r} is {found}; refusing to follow or replace it")


class InsufficientSpaceError(ShareEnvironmentError):
    """The free-space check before applying failed; nothing was written."""


class DiskFullError(ShareEnvironmentError):
    """The filesystem ran out of space mid-apply; the previous file set is intact."""


class RecoveryError(ShareEnvironmentError):
    """An interrupted apply could not be completed; the journal is kept for the next attempt."""
