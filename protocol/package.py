"""Package format v1: a signed header followed by a compressed, chunk-encrypted payload.

Byte layout (all integers big-endian; see docs/protocol.md)::

    magic        7  b"\\x89EDUPKG"
    version      1  0x01
    header_len   4  length of the header (1 .. MAX_HEADER_BYTES)
    header       n  canonical JSON (protocol.header), UTF-8
    signer_id   32  SHA-256 key id of the signing key (raw bytes of the hex key id)
    sig_len      2  signature length (64 for Ed25519)
    signature    s  Ed25519 over SIGNATURE_CONTEXT || magic || version || header_len || header
    payload         chunks of AES-256-GCM(zstd(plaintext)), chunk_size + 16 bytes each,
                    the last one shorter or equal; digest over all payload bytes in the header

Reading order: signature (pinned key) -> sender/recipient -> expiry -> suite -> payload
size -> payload digest over the ciphertext (so any change to stored bytes is caught before
a single byte is decrypted) -> key unwrap -> stream-decrypt, each chunk authenticated
before its plaintext is handed to the decompressor, the declared plaintext size enforced
on every read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

import blake3
import zstandard
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol.errors import (
    BadMagicError,
    ChunkAuthenticationError,
    DecompressionBombError,
    DecompressionError,
    ExpiredError,
    FormatError,
    HeaderFormatError,
    HeaderSizeError,
    InvalidFieldError,
    KeyUnwrapError,
    LayoutError,
    PackageError,
    PayloadDigestError,
    PlaintextTooLongError,
    PlaintextTooShortError,
    SenderMismatchError,
    SignatureError,
    TrailingDataError,
    TruncatedError,
    UnknownSenderError,
    UnknownSuiteError,
    UnsupportedVersionError,
    WrongRecipientError,
)
from protocol.header import (
    FORMAT_VERSION,
    KINDS,
    MAX_EXPECTED_STATE_BYTES,
    MAX_HEADER_BYTES,
    MAX_MANIFEST_BYTES,
    PLAINTEXT_BYTES,
    PackageHeader,
    canonical_json,
    check_json_value,
    check_object,
    decode_header_json,
    format_time,
    parse_header,
    parse_identity,
    parse_time,
    peek_suite,
    validate_counts,
    validate_replace_buckets,
)
from protocol.keys import PartyKeys, PublicBundle
from protocol.layout import new_package_id, temp_name, validate_id, validate_package_id, validate_sequence

SUITE_V1 = "ed25519-x25519-hkdf-sha256-aes256gcm-sha256-zstd"
#: v1 with a BLAKE3-256 payload digest: the digest pass reads the whole payload before anything
#: is decrypted, and BLAKE3 is ~10x faster than SHA-256 on CPUs without SHA extensions.
SUITE_BLAKE3 = "ed25519-x25519-hkdf-sha256-aes256gcm-blake3-zstd"
#: What writers use unless told otherwise; readers accept every suite of SUPPORTED_SUITES.
DEFAULT_SUITE = SUITE_BLAKE3


class PayloadHash(Protocol):
    """The part of hashlib's and blake3's hash objects the payload digest uses."""

    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


#: The payload digest of each suite (the only algorithm the two suites differ in).
PAYLOAD_HASHES: Mapping[str, Callable[[], PayloadHash]] = {
    SUITE_V1: hashlib.sha256,
    SUITE_BLAKE3: blake3.blake3,
}
SUPPORTED_SUITES = frozenset(PAYLOAD_HASHES)

MAGIC = b"\x89EDUPKG"
PREFIX = MAGIC + bytes([FORMAT_VERSION])
SIGNATURE_CONTEXT = b"edu-sync package v1 signature\x00"
WRAP_INFO = b"edu-sync package v1 key wrap"
TAG_BYTES = 16
KEY_ID_BYTES = 32
MAX_SIGNATURE_BYTES = 1024

DEFAULT_CHUNK_SIZE = 1024 * 1024
MIN_CHUNK_SIZE = 256
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_LEVEL = 3
DEFAULT_TTL = timedelta(days=30)
DEFAULT_READ_SIZE = 1024 * 1024
#: Larger zstd windows are refused: decoder memory stays bounded whatever the sender chose.
MAX_WINDOW_SIZE = 1 << 27
#: Overshooting the declared plaintext size by more than this is reported as a bomb.
BOMB_MARGIN = 16 * 1024 * 1024
_DIGEST_BLOCK = 4 * 1024 * 1024
_DIGEST_BUFFERS = 3  # one being hashed, one being read, one ready


# --------------------------------------------------------------------------- primitives


def chunk_nonce(index: int, final: bool) -> bytes:
    """11-byte big-endian chunk counter || 1-byte last-chunk flag (STREAM construction)."""
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def chunk_ad(package_id: str, index: int) -> bytes:
    """Associated data of a chunk: the 16-byte package id and the 8-byte chunk index."""
    return bytes.fromhex(package_id) + index.to_bytes(8, "big")


def _wrap_kek(shared: bytes, ephemeral_public: bytes, recipient_public: bytes, package_id: str) -> AESGCM:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + recipient_public,
        info=WRAP_INFO + bytes.fromhex(package_id),
    )
    return AESGCM(hkdf.derive(shared))


def wrap_data_key(
    data_key: bytes, recipient: PublicBundle, package_id: str, ephemeral: X25519PrivateKey | None = None
) -> tuple[bytes, bytes]:
    """Wrap ``data_key`` for the recipient: X25519 (ephemeral) -> HKDF-SHA256 -> AES-256-GCM."""
    ephemeral = ephemeral or X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = ephemeral.exchange(recipient.encryption_key())
    kek = _wrap_kek(shared, ephemeral_public, recipient.encryption_public_key, package_id)
    # The KEK is unique per ephemeral key, so the all-zero nonce is used exactly once.
    wrapped = kek.encrypt(bytes(12), data_key, bytes.fromhex(package_id))
    return ephemeral_public, wrapped


def unwrap_data_key(header: PackageHeader, recipient: PartyKeys) -> bytes:
    recipient_public = recipient.encryption_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = recipient.encryption_key.exchange(
            X25519PublicKey.from_public_bytes(header.key_wrap.ephemeral_public_key)
        )
        kek = _wrap_kek(shared, header.key_wrap.ephemeral_public_key, recipient_public, header.package_id)
        return kek.decrypt(bytes(12), header.key_wrap.wrapped_key, bytes.fromhex(header.package_id))
    except (InvalidTag, ValueError) as exc:
        raise KeyUnwrapError(
            f"package {header.package_id}: the data key does not unwrap with the private key of "
            f"{recipient.party_id} (wrapped for another key, or corrupted by the sender)",
            header=header,
        ) from exc


def _signed_message(header_raw: bytes) -> bytes:
    return SIGNATURE_CONTEXT + PREFIX + len(header_raw).to_bytes(4, "big") + header_raw


# ------------------------------------------------------------------------------- writer


class PackageWriter:
    """Stream plaintext in, get a signed, encrypted package file at ``path`` on close.

    The payload is compressed and encrypted into a spool file next to the destination
    while it streams; ``close()`` builds the signed header (payload digest, counts,
    expected state, manifest), writes header + payload under a temporary name in the same
    directory, fsyncs, and renames.  ``counts``, ``expected_state`` and ``manifest`` may be
    set until ``close()``.  Used as a context manager, an exception discards everything.
    ``suite`` defaults to :data:`DEFAULT_SUITE`; :data:`SUITE_V1` is for agents that
    predate it (they refuse any other suite).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        kind: str,
        sender: PartyKeys,
        recipient: PublicBundle,
        subscription: str,
        sequence: int,
        builds_on: int | None = None,
        catalog: Mapping[str, Any] | None = None,
        schema: Sequence[Mapping[str, Any]] | None = None,
        counts: Mapping[str, int] | None = None,
        expected_state: Mapping[str, Any] | None = None,
        manifest: Mapping[str, Any] | None = None,
        replace_buckets: Sequence[int] | None = None,
        expires: datetime | timedelta = DEFAULT_TTL,
        created: datetime | None = None,
        package_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        level: int = DEFAULT_LEVEL,
        suite: str = DEFAULT_SUITE,
    ) -> None:
        self.path = Path(path)
        if kind not in KINDS:
            raise InvalidFieldError(f"kind {kind!r} is not one of {', '.join(sorted(KINDS))}")
        if suite not in SUPPORTED_SUITES:
            raise InvalidFieldError(f"suite {suite!r} is not one of {', '.join(sorted(SUPPORTED_SUITES))}")
        try:
            validate_id(subscription, "subscription id")
            validate_sequence(sequence)
            if builds_on is not None:
                validate_sequence(builds_on, "builds_on")
            self.package_id = validate_package_id(package_id) if package_id else new_package_id()
        except LayoutError as exc:
            raise InvalidFieldError(str(exc)) from exc
        if builds_on is not None and builds_on >= sequence:
            raise InvalidFieldError(f"builds_on {builds_on} must be below sequence {sequence}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidFieldError(f"chunk_size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        created = created or datetime.now(timezone.utc)
        expires_at = created + expires if isinstance(expires, timedelta) else expires
        if format_time(expires_at) <= format_time(created):
            raise InvalidFieldError(
                f"expires {format_time(expires_at)} is not after created {format_time(created)}"
            )
        catalog = check_object(catalog if catalog is not None else {}, "catalog")
        if schema is None:
            schema = []
        if not isinstance(schema, (list, tuple)) or not all(isinstance(c, Mapping) for c in schema):
            raise InvalidFieldError("schema must be a list of column objects (dicts)")
        check_json_value(list(schema), "schema")
        self._fields: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "suite": suite,
            "package_id": self.package_id,
            "kind": kind,
            "sender": sender.party_id,
            "sender_key_id": sender.public_bundle().signing_key_id,
            "recipient": recipient.party_id,
            "recipient_key_id": recipient.encryption_key_id,
            "subscription": subscription,
            "sequence": sequence,
            "builds_on": builds_on,
            "created": format_time(created),
            "expires": format_time(expires_at),
            "catalog": catalog,
            "schema": list(schema),
        }
        if replace_buckets is not None:  # absent unless set: every other header keeps its bytes
            self._fields["replace_buckets"] = list(validate_replace_buckets(replace_buckets, kind, builds_on))
        self._sender = sender
        self._counts: dict[str, int] = {}
        self._expected_state: dict[str, Any] | None = None
        self._manifest: dict[str, Any] | None = None
        self.set_counts(counts or {})
        self.set_expected_state(expected_state)
        self.set_manifest(manifest)

        self._chunk_size = chunk_size
        data_key = AESGCM.generate_key(256)
        self._aead = AESGCM(data_key)
        ephemeral_public, wrapped = wrap_data_key(data_key, recipient, self.package_id)
        self._fields["key_wrap"] = {
            "ephemeral_public_key": base64.b64encode(ephemeral_public).decode("ascii"),
            "wrapped_key": base64.b64encode(wrapped).decode("ascii"),
        }
        self._ad_prefix = bytes.fromhex(self.package_id)
        self._chunker = zstandard.ZstdCompressor(level=level).chunker(chunk_size=chunk_size)
        self._pending: bytes | None = None
        self._index = 0
        self._ciphertext_bytes = 0
        self._plaintext_bytes = 0
        self._hash = PAYLOAD_HASHES[suite]()
        self._out = bytearray(chunk_size + TAG_BYTES)
        self._spool_path = self.path.parent / temp_name(self.path.name)
        self._spool: BinaryIO | None = open(self._spool_path, "xb", buffering=0)  # noqa: SIM115
        self._closed = False

    # -- fields that may be filled while or after streaming

    def set_counts(self, counts: Mapping[str, int]) -> None:
        """Replace the counts (rows_upserted, rows_deleted, files, ...); plaintext_bytes is ours."""
        self._counts = validate_counts(counts, allow_plaintext=False)

    def set_expected_state(self, expected_state: Mapping[str, Any] | None) -> None:
        self._expected_state = check_object(expected_state, "expected_state", MAX_EXPECTED_STATE_BYTES)

    def set_manifest(self, manifest: Mapping[str, Any] | None) -> None:
        self._manifest = check_object(manifest, "manifest", MAX_MANIFEST_BYTES)

    @property
    def plaintext_bytes(self) -> int:
        return self._plaintext_bytes

    # -- streaming

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise PackageError(f"package {self.path} is already closed")
        size = memoryview(data).nbytes
        for compressed in self._chunker.compress(data):
            self._push(compressed)
        self._plaintext_bytes += size
        return size

    def _push(self, compressed: bytes) -> None:
        # One chunk is held back: only at close do we know which chunk is the last.
        if self._pending is not None:
            self._emit(self._pending, final=False)
        self._pending = compressed

    def _emit(self, compressed: bytes, *, final: bool) -> None:
        assert self._spool is not None
        out = memoryview(self._out)[: len(compressed) + TAG_BYTES]
        self._aead.encrypt_into(
            chunk_nonce(self._index, final), compressed, self._ad_prefix + self._index.to_bytes(8, "big"), out
        )
        self._hash.update(out)
        _write_all(self._spool.fileno(), out)
        self._index += 1
        self._ciphertext_bytes += len(out)

    # -- finishing

    def close(self) -> Path:
        """Finish the payload, sign the header, and atomically publish the file at ``path``."""
        if self._closed:
            return self.path
        try:
            for compressed in self._chunker.finish():
                self._push(compressed)
            self._emit(self._pending or b"", final=True)
            header_raw = self._header_bytes()
            signature = self._sender.signing_key.sign(_signed_message(header_raw))
            self._publish(header_raw, signature)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def _header_bytes(self) -> bytes:
        fields = dict(self._fields)
        fields["counts"] = {**self._counts, PLAINTEXT_BYTES: self._plaintext_bytes}
        fields["expected_state"] = self._expected_state
        fields["manifest"] = self._manifest
        fields["payload"] = {
            "chunk_size": self._chunk_size,
            "chunks": self._index,
            "ciphertext_bytes": self._ciphertext_bytes,
            "digest": self._hash.hexdigest(),
        }
        raw = canonical_json(fields)
        if len(raw) > MAX_HEADER_BYTES:
            raise InvalidFieldError(f"header is {len(raw)} bytes; the cap is {MAX_HEADER_BYTES}")
        return raw

    def _publish(self, header_raw: bytes, signature: bytes) -> None:
        assert self._spool is not None
        self._spool.close()
        self._spool = None
        signer_id = bytes.fromhex(self._fields["sender_key_id"])
        envelope = (
            PREFIX
            + len(header_raw).to_bytes(4, "big")
            + header_raw
            + signer_id
            + len(signature).to_bytes(2, "big")
            + signature
        )
        temp_path = self.path.parent / temp_name(self.path.name)
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            _write_all(fd, envelope)
            with open(self._spool_path, "rb") as spool:
                _copy_fd(spool.fileno(), fd, self._ciphertext_bytes)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp_path.unlink(missing_ok=True)
            raise
        os.close(fd)
        if self.path.exists():
            temp_path.unlink(missing_ok=True)
            raise PackageError(f"{self.path} already exists; packages are never overwritten")
        os.rename(temp_path, self.path)
        _fsync_dir(self.path.parent)
        self._spool_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Discard everything written so far; the destination is never created."""
        self._closed = True
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._spool_path.unlink(missing_ok=True)

    def __enter__(self) -> PackageWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_fd(src: int, dst: int, count: int) -> None:
    """Copy ``count`` bytes in the kernel where possible (copy_file_range, then sendfile)."""
    offset = 0
    copy_range = getattr(os, "copy_file_range", None)
    try:
        while offset < count:
            if copy_range is not None:
                done = copy_range(src, dst, count - offset, offset_src=offset)
            else:
                done = os.sendfile(dst, src, offset, count - offset)
            if done == 0:
                raise OSError(f"spool file ended after {offset} of {count} bytes")
            offset += done
    except OSError as exc:
        if offset or getattr(exc, "errno", None) is None:
            raise
        os.lseek(src, 0, os.SEEK_SET)
        while True:
            block = os.read(src, _DIGEST_BLOCK)
            if not block:
                break
            _write_all(dst, block)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------- reader


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a package for reading; refuse FIFOs, devices and directories without blocking on them."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class Envelope:
    """The unauthenticated framing of a package: header bytes, signer key id, signature."""

    header_raw: bytes
    signer_key_id: str
    signature: bytes
    payload_offset: int
    file_size: int


def _read_exact(fd: int, offset: int, size: int, what: str, file_size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise TruncatedError(f"file ends inside the {what} ({file_size} bytes in total)")
    return data


def read_envelope(fd: int) -> Envelope:
    """Parse the framing (magic, version, lengths) without trusting anything in it."""
    file_size = os.fstat(fd).st_size
    prefix = os.pread(fd, len(PREFIX) + 4, 0)
    if prefix[: len(MAGIC)] != MAGIC[: len(prefix)]:
        raise BadMagicError("not an edu-sync package: the file does not start with the package magic")
    if len(prefix) < len(MAGIC) + 1:
        raise TruncatedError(f"file ends inside the magic/version ({file_size} bytes in total)")
    if prefix[len(MAGIC)] != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"package format version {prefix[len(MAGIC)]} is not supported "
            f"(this reader implements {FORMAT_VERSION})"
        )
    if len(prefix) < len(PREFIX) + 4:
        raise TruncatedError(f"file ends inside the header length ({file_size} bytes in total)")
    header_len = int.from_bytes(prefix[len(PREFIX) :], "big")
    if not 1 <= header_len <= MAX_HEADER_BYTES:
        raise HeaderSizeError(f"declared header length {header_len} is outside 1..{MAX_HEADER_BYTES}")
    offset = len(PREFIX) + 4
    header_raw = _read_exact(fd, offset, header_len, "header", file_size)
    offset += header_len
    signer = _read_exact(fd, offset, KEY_ID_BYTES + 2, "signature block", file_size)
    sig_len = int.from_bytes(signer[KEY_ID_BYTES:], "big")
    if not 1 <= sig_len <= MAX_SIGNATURE_BYTES:
        raise FormatError(f"declared signature length {sig_len} is outside 1..{MAX_SIGNATURE_BYTES}")
    offset += KEY_ID_BYTES + 2
    signature = _read_exact(fd, offset, sig_len, "signature", file_size)
    return Envelope(header_raw, signer[:KEY_ID_BYTES].hex(), signature, offset + sig_len, file_size)


def _claimed_sender(header_raw: bytes) -> str:
    """For error messages only: what an unverified header claims about its sender."""
    try:
        data = json.loads(header_raw)
        return f"claims sender {str(data.get('sender'))[:64]!r}"
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        return "header unreadable"


def verify_signature(envelope: Envelope, trusted_senders: Mapping[str, PublicBundle]) -> PublicBundle:
    """Check the signature against the pinned key named by the signer key id."""
    bundle = next((b for b in trusted_senders.values() if b.signing_key_id == envelope.signer_key_id), None)
    if bundle is None:
        pinned = ", ".join(sorted(trusted_senders)) or "none"
        raise UnknownSenderError(
            f"package is signed by key {envelope.signer_key_id}, which is not a pinned sender key "
            f"({_claimed_sender(envelope.header_raw)}; pinned senders: {pinned})"
        )
    try:
        bundle.signing_key().verify(envelope.signature, _signed_message(envelope.header_raw))
    except InvalidSignature as exc:
        raise SignatureError(
            f"signature does not verify with the pinned key of {bundle.party_id!r} "
            f"(key id {bundle.signing_key_id}): the header or signature was altered"
        ) from exc
    return bundle


@dataclass(frozen=True)
class _SignedHeader:
    """A header whose signature verified: its JSON, and the typed parse (or why it failed)."""

    data: dict[str, Any]
    header: PackageHeader | None
    parse_failure: HeaderFormatError | None


def _decode_signed(envelope: Envelope, signer: PublicBundle) -> _SignedHeader:
    data = decode_header_json(envelope.header_raw)
    try:
        signed = _SignedHeader(data, parse_header(envelope.header_raw, data), None)
    except HeaderFormatError as exc:
        signed = _SignedHeader(data, None, exc)
    sender, sender_key_id, _, _ = parse_identity(data)
    if sender != signer.party_id or sender_key_id != signer.signing_key_id:
        raise SenderMismatchError(
            f"header names sender {sender!r} (key {sender_key_id}) but is signed by "
            f"{signer.party_id!r} (key {signer.signing_key_id})",
            header=signed.header,
        )
    return signed


def _check_recipient(signed: _SignedHeader, recipient: PartyKeys | PublicBundle) -> None:
    _, _, to, to_key_id = parse_identity(signed.data)
    bundle = recipient.public_bundle() if isinstance(recipient, PartyKeys) else recipient
    if to != bundle.party_id or to_key_id != bundle.encryption_key_id:
        raise WrongRecipientError(
            f"package is addressed to {to!r} (key {to_key_id}), not to {bundle.party_id!r} "
            f"(key {bundle.encryption_key_id})",
            header=signed.header,
        )


def _check_expiry(signed: _SignedHeader, now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    expires = parse_time(signed.data.get("expires"), "expires")
    if now >= expires:
        raise ExpiredError(
            f"package expired at {format_time(expires)} (now {format_time(now)})", header=signed.header
        )


def _check_suite(signed: _SignedHeader) -> PackageHeader:
    suite = peek_suite(signed.data)
    if suite not in SUPPORTED_SUITES:
        raise UnknownSuiteError(
            f"crypto suite {suite!r} is not supported (supported: {', '.join(sorted(SUPPORTED_SUITES))})",
            header=signed.header,
        )
    if signed.parse_failure is not None:
        raise signed.parse_failure
    assert signed.header is not None
    _check_payload_shape(signed.header)
    return signed.header


def _check_header(
    envelope: Envelope,
    signer: PublicBundle,
    recipient: PartyKeys | PublicBundle | None,
    now: datetime | None,
) -> PackageHeader:
    """After the signature: sender, recipient, expiry, suite, then the typed parse."""
    signed = _decode_signed(envelope, signer)
    if recipient is not None:
        _check_recipient(signed, recipient)
    if now is not None:
        _check_expiry(signed, now)
    return _check_suite(signed)


def _check_payload_shape(header: PackageHeader) -> None:
    info = header.payload
    if not MIN_CHUNK_SIZE <= info.chunk_size <= MAX_CHUNK_SIZE:
        raise HeaderFormatError(
            f"chunk_size {info.chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}", header=header
        )
    full = info.chunk_size + TAG_BYTES
    last = info.ciphertext_bytes - (info.chunks - 1) * full
    if not TAG_BYTES <= last <= full:
        raise HeaderFormatError(
            f"{info.chunks} chunks of {info.chunk_size} bytes cannot make {info.ciphertext_bytes} "
            "ciphertext bytes",
            header=header,
        )


def _resolve_now(now: datetime | None, check_expiry: bool) -> datetime | None:
    if not check_expiry:
        return None
    return now if now is not None else datetime.now(timezone.utc)


def read_header(
    path: str | os.PathLike[str],
    *,
    trusted_senders: Mapping[str, PublicBundle],
    recipient: PartyKeys | PublicBundle | None = None,
    now: datetime | None = None,
    check_expiry: bool = True,
) -> PackageHeader:
    """Verify and return the header only (no payload access, no decryption).

    For sorting and routing: signature, sender, recipient (if given), expiry (unless
    ``check_expiry=False``) and suite are checked exactly as :func:`open_package` does.
    """
    with open_regular(path) as handle:
        envelope = read_envelope(handle.fileno())
    signer = verify_signature(envelope, trusted_senders)
    return _check_header(envelope, signer, recipient, _resolve_now(now, check_expiry))


def read_unverified_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header JSON WITHOUT any verification — for diagnostics (``inspect``) only."""
    with open_regular(path) as handle:
        envelope = read_envelope(handle.fileno())
    try:
        data = json.loads(envelope.header_raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HeaderFormatError(f"header is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HeaderFormatError("header is not a JSON object")
    return data


def check_payload(fd: int, envelope: Envelope, header: PackageHeader) -> None:
    """Size and ciphertext digest of the payload, before anything is decrypted."""
    info = header.payload
    expected_end = envelope.payload_offset + info.ciphertext_bytes
    if envelope.file_size < expected_end:
        raise TruncatedError(_truncation_message(envelope, header), header=header)
    if envelope.file_size > expected_end:
        raise TrailingDataError(
            f"{envelope.file_size - expected_end} bytes follow the final chunk "
            f"(appended or duplicated data; the header declares {info.chunks} chunks)",
            header=header,
        )
    found = _payload_digest(fd, envelope.payload_offset, info.ciphertext_bytes, header)
    if not hmac.compare_digest(found, info.digest):
        raise PayloadDigestError(
            f"payload digest mismatch: the {info.ciphertext_bytes} ciphertext bytes were altered, "
            "reordered or spliced from another package",
            header=header,
        )


def _payload_digest(fd: int, offset: int, length: int, header: PackageHeader) -> str:
    """The suite's digest of ``length`` bytes at ``offset``, read ahead by a second thread.

    Called only once the suite was accepted (``_check_suite``).  The thread copies the next
    blocks out of the page cache into a few reused buffers while this one hashes the
    previous one (``preadv``, hashlib and blake3 release the GIL), so the copy no longer
    adds to the hashing: ~15 % off a 1 GiB SHA-256 pass here.
    """
    size = min(_DIGEST_BLOCK, max(length, 1))
    free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[bytearray, int] | BaseException | None] = queue.SimpleQueue()
    for _ in range(_DIGEST_BUFFERS):
        free.put(bytearray(size))

    def read_ahead() -> None:
        position, remaining = offset, length
        try:
            while remaining:
                block = free.get()
                if block is None:  # the hashing side stopped
                    return
                got = os.preadv(fd, [memoryview(block)[: min(remaining, len(block))]], position)
                if got == 0:
                    raise TruncatedError(
                        f"file shrank while its digest was computed (at byte {position})", header=header
                    )
                full.put((block, got))
                position += got
                remaining -= got
            full.put(None)
        except BaseException as exc:  # raised in the hashing thread
            full.put(exc)

    reader = threading.Thread(target=read_ahead, name="payload-digest", daemon=True)
    reader.start()
    digest = PAYLOAD_HASHES[header.suite]()
    try:
        while (item := full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            block, got = item
            digest.update(memoryview(block)[:got])
            free.put(block)
    finally:
        free.put(None)
        reader.join()
    return digest.hexdigest()


def _truncation_message(envelope: Envelope, header: PackageHeader) -> str:
    info = header.payload
    have = envelope.file_size - envelope.payload_offset
    full = info.chunk_size + TAG_BYTES
    whole, partial = divmod(have, full)
    where = (
        f"at a chunk boundary after {whole} of {info.chunks} chunks"
        if partial == 0
        else f"inside chunk {whole} ({partial} of its bytes present)"
    )
    return (
        f"payload truncated {where}: {have} of {info.ciphertext_bytes} ciphertext bytes present "
        "(cut upload, or chunks dropped)"
    )


def open_package(
    path: str | os.PathLike[str],
    *,
    trusted_senders: Mapping[str, PublicBundle],
    recipient: PartyKeys,
    now: datetime | None = None,
) -> Package:
    """Verify a package completely up to the payload digest and return it, ready to stream.

    Nothing is decrypted unless signature, sender, recipient, expiry, suite, payload size
    and payload digest all check out.  ``trusted_senders`` maps party ids to pinned bundles.
    """
    handle = open_regular(path)
    try:
        fd = handle.fileno()
        envelope = read_envelope(fd)
        signer = verify_signature(envelope, trusted_senders)
        header = _check_header(envelope, signer, recipient, _resolve_now(now, True))
        check_payload(fd, envelope, header)
        data_key = unwrap_data_key(header, recipient)
    except BaseException:
        handle.close()
        raise
    return Package(Path(path), handle, envelope, header, data_key)


class Package:
    """An opened, verified package.  Plaintext can be streamed any number of times."""

    def __init__(
        self, path: Path, handle: BinaryIO, envelope: Envelope, header: PackageHeader, data_key: bytes
    ) -> None:
        self.path = path
        self.header = header
        self._handle = handle
        self._envelope = envelope
        self._data_key = data_key

    def plaintext(self) -> io.BufferedReader:
        """A readable binary file object over the plaintext (bounded memory)."""
        return io.BufferedReader(
            _PlaintextStream(self._handle.fileno(), self._envelope, self.header, self._data_key)
        )

    def iter_plaintext(self, size: int = DEFAULT_READ_SIZE) -> Iterator[bytes]:
        """Plaintext as bytes chunks of at most ``size`` bytes."""
        stream = _PlaintextStream(self._handle.fileno(), self._envelope, self.header, self._data_key)
        while True:
            block = stream.read(size)
            if not block:
                return
            yield block

    def verify_chunks(self) -> int:
        """Decrypt and decompress everything, discarding it; return the plaintext size."""
        stream = _PlaintextStream(self._handle.fileno(), self._envelope, self.header, self._data_key)
        buffer = bytearray(DEFAULT_READ_SIZE)
        total = 0
        while True:
            got = stream.readinto(buffer)
            if not got:
                return total
            total += got

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ZstdFrameWalker:
    """Follows zstd frame structure (RFC 8878) over a byte stream, without decompressing.

    ``zstandard``'s stream reader ends silently when its input stops inside a frame; the
    walker tells whether the stream ended on a frame boundary, so an incomplete frame is an
    error even when the bytes decompressed so far happen to match the declared size.
    Only headers are parsed (frame header, 3-byte block headers, skippable-frame sizes);
    block contents are skipped, so the cost is a few operations per 128 KiB block.
    """

    _MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self._need = 4  # bytes of the next header field to collect
        self._field = bytearray()
        self._state = "magic"
        self._skip = 0  # bytes of block content / skippable data still to pass over
        self._checksum = False
        self.frames = 0

    @property
    def at_boundary(self) -> bool:
        return self._state == "magic" and not self._field and self._skip == 0

    def feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._field), end - pos)
            self._field += data[pos : pos + take]
            pos += take
            if len(self._field) == self._need:
                field, self._field = bytes(self._field), bytearray()
                self._advance(field)

    def _advance(self, field: bytes) -> None:
        if self._state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == self._MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise ValueError(f"not a zstd frame (magic {magic:#010x})")
        elif self._state == "skippable":
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            descriptor = field[0]
            if descriptor & 0x08:
                raise ValueError("zstd frame header has its reserved bit set")
            single_segment = bool(descriptor & 0x20)
            fcs = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
            did = (0, 1, 2, 4)[descriptor & 0x03]
            self._checksum = bool(descriptor & 0x04)
            self._skip = (0 if single_segment else 1) + did + fcs
            self._state, self._need = "block", 3
        elif self._state == "block":
            header = int.from_bytes(field, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:
                raise ValueError("zstd block type 3 is reserved")
            self._skip = 1 if kind == 1 else size
            if last:
                self.frames += 1
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class _ChunkSource:
    """Hands authenticated, decrypted chunks to the decompressor; nothing else gets out."""

    def __init__(self, fd: int, envelope: Envelope, header: PackageHeader, data_key: bytes) -> None:
        self._fd = fd
        self._header = header
        self._info = header.payload
        self._aead = AESGCM(data_key)
        self._ad_prefix = bytes.fromhex(header.package_id)
        self._offset = envelope.payload_offset
        self._cipher = bytearray(self._info.chunk_size + TAG_BYTES)
        self._plain = bytearray(self._info.chunk_size)
        self._available = memoryview(b"")
        self._index = 0
        self.consumed = 0
        self.frames = ZstdFrameWalker()

    def read(self, size: int = -1) -> memoryview:
        # A view, not a copy: the zstd reader consumes all of it before it calls read()
        # again, and only then is the buffer behind it overwritten by the next chunk.
        if not self._available and not self._next_chunk():
            return memoryview(b"")
        if size < 0:
            size = len(self._available)
        out = self._available[:size]
        self._available = self._available[size:]
        self.consumed += len(out)
        try:
            self.frames.feed(out)
        except ValueError as exc:
            raise DecompressionError(
                f"authenticated payload is not a valid zstd stream at compressed byte {self.consumed}: {exc}",
                header=self._header,
            ) from exc
        return out

    def _next_chunk(self) -> bool:
        info = self._info
        if self._index >= info.chunks:
            return False
        final = self._index == info.chunks - 1
        length = (
            info.ciphertext_bytes - self._index * (info.chunk_size + TAG_BYTES)
            if final
            else len(self._cipher)
        )
        cipher = memoryview(self._cipher)[:length]
        got = os.preadv(self._fd, [cipher], self._offset)
        if got != length:
            raise TruncatedError(
                f"file ends inside chunk {self._index} of {info.chunks} while decrypting", header=self._header
            )
        plain = memoryview(self._plain)[: length - TAG_BYTES]
        try:
            self._aead.decrypt_into(
                chunk_nonce(self._index, final),
                cipher,
                self._ad_prefix + self._index.to_bytes(8, "big"),
                plain,
            )
        except InvalidTag as exc:
            raise ChunkAuthenticationError(
                f"chunk {self._index} of {info.chunks} failed authentication (altered, reordered, "
                f"duplicated, spliced from another package, or the stream was cut); no plaintext of it "
                "was released",
                header=self._header,
            ) from exc
        self._offset += length
        self._index += 1
        self._available = plain
        return True


class _PlaintextStream(io.RawIOBase):
    """Decompressed plaintext, never more than the declared size, failing loudly at the end."""

    def __init__(self, fd: int, envelope: Envelope, header: PackageHeader, data_key: bytes) -> None:
        super().__init__()
        self._header = header
        self._declared = header.plaintext_bytes
        self._source = _ChunkSource(fd, envelope, header, data_key)
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        self._reader = decompressor.stream_reader(
            self._source,  # type: ignore[arg-type]  # a duck-typed source: only .read() is used
            read_size=header.payload.chunk_size,
            read_across_frames=True,
            closefd=False,
        )
        self._produced = 0
        self._finished = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._finished:
            return 0
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        try:
            got = self._reader.readinto(view)
        except zstandard.ZstdError as exc:
            raise self._invalid(exc) from exc
        return self._account(got)

    def read(self, size: int = -1) -> bytes:
        """Bytes straight from the decompressor (one allocation, no extra copy)."""
        if size is None or size < 0:
            return self.readall()
        if self._finished or size == 0:
            return b""
        try:
            data: bytes = self._reader.read(size)
        except zstandard.ZstdError as exc:
            raise self._invalid(exc) from exc
        self._account(len(data))
        return data

    def _account(self, got: int) -> int:
        """Enforce the declared size on every piece before it is handed out."""
        if got == 0:
            self._finished = True
            if self._source.read(1) or not self._source.frames.at_boundary or not self._source.frames.frames:
                raise DecompressionError(
                    f"authenticated payload ends inside a zstd frame after {self._produced} plaintext bytes "
                    "(the compressed stream is incomplete)",
                    header=self._header,
                )
            if self._produced != self._declared:
                raise PlaintextTooShortError(
                    f"payload ends after {self._produced} plaintext bytes; "
                    f"the header declares {self._declared}",
                    header=self._header,
                )
            return 0
        if self._produced + got > self._declared:
            self._finished = True
            raise self._overflow(self._produced + got)
        self._produced += got
        return got

    def _invalid(self, exc: zstandard.ZstdError) -> DecompressionError:
        self._finished = True
        return DecompressionError(
            f"authenticated payload is not a valid zstd stream after {self._produced} bytes: {exc}",
            header=self._header,
        )

    def _overflow(self, produced: int) -> PlaintextTooLongError:
        """Measure (bounded) how far the stream overshoots; nothing more is released."""
        scratch = bytearray(min(DEFAULT_READ_SIZE, BOMB_MARGIN))
        limit = self._declared + BOMB_MARGIN
        try:
            while produced <= limit:
                got = self._reader.readinto(scratch)
                if not got:
                    return PlaintextTooLongError(
                        f"payload holds {produced} plaintext bytes, more than the declared {self._declared}; "
                        "stopped at the declared size",
                        header=self._header,
                    )
                produced += got
        except (zstandard.ZstdError, PackageError):
            pass
        return DecompressionBombError(
            f"payload inflates more than {BOMB_MARGIN} bytes beyond the declared {self._declared} plaintext "
            f"bytes (decompression bomb, from {self._source.consumed} compressed bytes); stopped",
            header=self._header,
        )


# ------------------------------------------------------------------------------ inspect


@dataclass
class Inspection:
    """Result of :func:`inspect_package`: one entry per check, in reading order."""

    path: Path
    checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (ok|failed|skipped, detail)
    header: dict[str, Any] | None = None
    header_verified: bool = False

    @property
    def ok(self) -> bool:
        """No check failed and the signature was verified (checks needing keys may be skipped)."""
        failed = any(status == "failed" for status, _ in self.checks.values())
        return not failed and self.checks.get("signature", ("",))[0] == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "ok": self.ok,
            "header_verified": self.header_verified,
            "checks": {name: {"status": s, "detail": d} for name, (s, d) in self.checks.items()},
            "header": self.header,
        }


CHECK_NAMES = ("signature", "recipient", "expiry", "suite", "payload", "chunks")


def inspect_package(
    path: str | os.PathLike[str],
    *,
    trusted_senders: Mapping[str, PublicBundle],
    recipient: PartyKeys | None = None,
    now: datetime | None = None,
) -> Inspection:
    """Run every check that the given keys allow and say which passed (for ``package inspect``)."""
    result = Inspection(Path(path))
    checks = result.checks

    def skip_rest(reason: str) -> Inspection:
        for name in CHECK_NAMES:
            checks.setdefault(name, ("skipped", reason))
        return result

    try:
        result.header = read_unverified_header(path)
    except (PackageError, OSError) as exc:
        checks["signature"] = ("failed", str(exc))
        return skip_rest("the framing is unreadable")
    if not trusted_senders:
        checks["signature"] = ("skipped", "no pinned sender bundle given (--sender-bundle)")
        return skip_rest("the signature was not checked")
    with open_regular(path) as handle:
        fd = handle.fileno()
        envelope = read_envelope(fd)
        try:
            signer = verify_signature(envelope, trusted_senders)
            signed = _decode_signed(envelope, signer)
        except PackageError as exc:
            checks["signature"] = ("failed", str(exc))
            return skip_rest("the signature did not verify")
        checks["signature"] = ("ok", f"signed by {signer.party_id} (key {signer.signing_key_id})")
        result.header_verified = True
        if recipient is None:
            checks["recipient"] = ("skipped", "no recipient keys given (--keys)")
        else:
            _record(checks, "recipient", lambda: _check_recipient(signed, recipient), "addressed to us")
        moment = now or datetime.now(timezone.utc)
        _record(checks, "expiry", lambda: _check_expiry(signed, moment), f"valid at {format_time(moment)}")
        try:
            header = _check_suite(signed)
        except PackageError as exc:
            checks["suite"] = ("failed", str(exc))
            return skip_rest("the suite or header is not usable")
        checks["suite"] = ("ok", header.suite)
        try:
            check_payload(fd, envelope, header)
        except PackageError as exc:
            checks["payload"] = ("failed", str(exc))
            return skip_rest("the payload did not match its signed digest")
        info = header.payload
        checks["payload"] = ("ok", f"{info.chunks} chunks, {info.ciphertext_bytes} bytes, digest matches")
        if recipient is None or checks["recipient"][0] != "ok":
            checks["chunks"] = ("skipped", "needs the recipient's keys (--keys)")
            return result
        try:
            package = Package(Path(path), handle, envelope, header, unwrap_data_key(header, recipient))
            size = package.verify_chunks()
        except PackageError as exc:
            checks["chunks"] = ("failed", str(exc))
            return result
        checks["chunks"] = ("ok", f"all {info.chunks} chunks authentic, {size} plaintext bytes")
    return result


def _record(checks: dict[str, tuple[str, str]], name: str, check: Callable[[], None], detail: str) -> None:
    try:
        check()
    except PackageError as exc:
        checks[name] = ("failed", str(exc))
    else:
        checks[name] = ("ok", detail)
