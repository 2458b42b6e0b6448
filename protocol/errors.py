"""Exceptions of the exchange protocol: one class per thing that can be wrong.

Callers (daemon, stores, CLI) catch :class:`PackageError` to quarantine a package and
report the message; tests assert the specific subclass.  Errors raised after the
signature has been verified carry the verified header in ``.header`` so a rejected
package can still be reported against its subscription and sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.header import PackageHeader


class ProtocolError(Exception):
    """Root of every error raised by the ``protocol`` package."""


# ---------------------------------------------------------------- identities / keys


class KeysError(ProtocolError):
    """Key directory or public bundle problem."""


class KeysExistError(KeysError):
    """``init_keys`` refuses to overwrite an existing identity."""


class KeyPermissionError(KeysError):
    """A private key file (or its directory) is accessible by group or others."""


class KeyFormatError(KeysError):
    """A key file or bundle is missing, malformed, or inconsistent."""


# ---------------------------------------------------------------- exchange layout


class LayoutError(ProtocolError, ValueError):
    """An identifier or file name does not follow the exchange layout rules."""


# ---------------------------------------------------------------- packages


class PackageError(ProtocolError):
    """A package is malformed, not authentic, not for us, or not acceptable now."""

    def __init__(self, message: str, *, header: PackageHeader | None = None) -> None:
        super().__init__(message)
        self.header = header


class InvalidFieldError(PackageError, ValueError):
    """A writer was given a header field that the format does not allow."""


class FormatError(PackageError):
    """The bytes are not a package of a format this code reads."""


class BadMagicError(FormatError):
    """The file does not start with the package magic."""


class UnsupportedVersionError(FormatError):
    """The format version byte is not one this code implements."""


class HeaderSizeError(FormatError):
    """The declared header length is zero or above the cap."""


class HeaderFormatError(FormatError):
    """The (signed) header is not canonical JSON or a field has the wrong shape."""


class UnknownSenderError(PackageError):
    """The signing key is not among the pinned senders."""


class SignatureError(PackageError):
    """The signature does not verify against the pinned sender key."""


class SenderMismatchError(PackageError):
    """Validly signed, but the header names a different sender or key than the signer's."""


class WrongRecipientError(PackageError):
    """The package is addressed to another party or another encryption key."""


class ExpiredError(PackageError):
    """The package's expiry time has passed."""


class UnknownSuiteError(PackageError):
    """The crypto suite id is not one this code implements."""


class KeyUnwrapError(PackageError):
    """The data key cannot be unwrapped with the recipient's private key."""


class PayloadError(PackageError):
    """The encrypted payload does not match what the signed header declares."""


class TruncatedError(PayloadError):
    """The file ends before the payload the header declares."""


class TrailingDataError(PayloadError):
    """There are bytes after the payload the header declares."""


class PayloadDigestError(PayloadError):
    """The ciphertext digest differs from the signed one (bytes altered, reordered, spliced)."""


class ChunkAuthenticationError(PayloadError):
    """A chunk failed AEAD authentication; none of its plaintext is released."""


class PlaintextSizeError(PackageError):
    """The decompressed payload is not exactly the declared plaintext size."""


class PlaintextTooLongError(PlaintextSizeError):
    """The payload inflates beyond the declared plaintext size (stopped at the limit)."""


class DecompressionBombError(PlaintextTooLongError):
    """The payload inflates far (more than BOMB_MARGIN) beyond its declared plaintext size."""


class PlaintextTooShortError(PlaintextSizeError):
    """The payload ends before the declared plaintext size."""


class DecompressionError(PackageError):
    """The authenticated payload is not a valid compressed stream (sender bug)."""
