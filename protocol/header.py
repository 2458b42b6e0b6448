"""The signed package header: canonical JSON encoding and the typed, validated view.

Canonical JSON = ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8, restricted to objects with string keys, arrays, strings, integers in
the IEEE-754 exact range (|n| < 2**53), booleans and null.  No floats: their text form
differs between implementations, and the header must re-encode to the same bytes in any
language.  A reader re-encodes the parsed header and rejects it unless the bytes match.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from protocol.errors import HeaderFormatError, InvalidFieldError, LayoutError
from protocol.layout import validate_id, validate_package_id, validate_sequence

FORMAT_VERSION = 1

KIND_SNAPSHOT = "snapshot"
KIND_DELTA = "delta"
KIND_FILES = "files"
KIND_REVOKE = "revoke"
KIND_SUBSCRIPTIONS = "subscriptions"
KIND_REPORT = "report"
KIND_RECEIPT = "receipt"
KIND_REQUEST = "request"
KINDS = frozenset(
    {
        KIND_SNAPSHOT,
        KIND_DELTA,
        KIND_FILES,
        KIND_REVOKE,
        KIND_SUBSCRIPTIONS,
        KIND_REPORT,
        KIND_RECEIPT,
        KIND_REQUEST,
    }
)

MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
MAX_EXPECTED_STATE_BYTES = 256 * 1024
MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 32  # nesting of JSON values; deeper input is refused, never recursed into
DIGEST_BUCKETS = 256  # protocol.digest.BUCKETS (not imported: the header module stays numpy-free)
PLAINTEXT_BYTES = "plaintext_bytes"

_COUNT_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON bytes of ``value`` (raises InvalidFieldError for non-JSON values)."""
    check_json_value(value, "header")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def check_json_value(value: Any, where: str) -> None:
    """Reject anything canonical JSON cannot carry identically across implementations."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidFieldError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if item is None or isinstance(item, (str, bool)):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise InvalidFieldError(f"{path}: integer {item} is outside +-(2**53-1)")
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise InvalidFieldError(f"{path}: object key {key!r} is not a string")
                stack.append((sub, f"{path}.{key}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))
        else:
            raise InvalidFieldError(
                f"{path}: {type(item).__name__} is not allowed in a header (use strings for decimals)"
            )


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with second precision, e.g. ``2026-11-25T14:38:16Z``."""
    if moment.tzinfo is None:
        raise InvalidFieldError(f"time {moment!r} has no time zone; use an aware datetime")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object, name: str) -> datetime:
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise HeaderFormatError(
            f"header field {name} must be a UTC time like 2026-01-31T08:00:00Z, got {text!r}"
        )
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise HeaderFormatError(f"header field {name}: {exc}") from exc


@dataclass(frozen=True)
class PayloadInfo:
    """How the encrypted payload is laid out, and its ciphertext digest."""

    chunk_size: int
    chunks: int
    ciphertext_bytes: int
    digest: str  # hex digest of the ciphertext bytes (algorithm fixed by the suite)


@dataclass(frozen=True)
class KeyWrap:
    """The data key wrapped for the recipient (ephemeral public key + AEAD-wrapped key)."""

    ephemeral_public_key: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class PackageHeader:
    """A verified header.  ``raw`` holds the exact signed bytes."""

    suite: str
    package_id: str
    kind: str
    sender: str
    sender_key_id: str
    recipient: str
    recipient_key_id: str
    subscription: str
    sequence: int
    builds_on: int | None
    created: datetime
    expires: datetime
    catalog: Mapping[str, Any]
    schema: list[Any]
    counts: Mapping[str, int]
    expected_state: Mapping[str, Any] | None
    manifest: Mapping[str, Any] | None
    payload: PayloadInfo
    key_wrap: KeyWrap
    raw: bytes = field(repr=False, compare=False)
    replace_buckets: tuple[int, ...] | None = None
    """Optional, table deltas only: the digest buckets whose rows this package replaces."""

    @property
    def plaintext_bytes(self) -> int:
        return self.counts[PLAINTEXT_BYTES]

    def to_dict(self) -> dict[str, Any]:
        """The header as parsed JSON (what was signed)."""
        result: dict[str, Any] = json.loads(self.raw)
        return result


def validate_counts(counts: Mapping[str, Any], *, allow_plaintext: bool) -> dict[str, int]:
    result: dict[str, int] = {}
    for key, value in counts.items():
        if not isinstance(key, str) or not _COUNT_KEY_RE.fullmatch(key):
            raise InvalidFieldError(f"counts key {key!r} must match [a-z][a-z0-9_]*")
        if key == PLAINTEXT_BYTES and not allow_plaintext:
            raise InvalidFieldError("counts.plaintext_bytes is computed by the writer; do not set it")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE_INTEGER:
            raise InvalidFieldError(f"counts.{key} must be a non-negative integer, got {value!r}")
        result[key] = value
    return result


def check_object(value: Any, name: str, cap: int | None = None) -> dict[str, Any] | None:
    """Validate an optional JSON object field and its canonical size."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidFieldError(f"{name} must be a JSON object (dict), got {type(value).__name__}")
    check_json_value(value, name)
    if cap is not None:
        size = len(canonical_json(value))
        if size > cap:
            raise InvalidFieldError(f"{name} is {size} bytes of canonical JSON; the cap is {cap}")
    return dict(value)


def validate_replace_buckets(value: Any, kind: str, builds_on: int | None) -> tuple[int, ...]:
    """``replace_buckets``: a non-empty, strictly ascending list of digest buckets (0..255),
    allowed only on a ``delta`` that builds on a position (it replaces rows the recipient has)."""
    if kind != KIND_DELTA:
        raise InvalidFieldError(f"replace_buckets is only allowed on a delta package, not on {kind!r}")
    if builds_on is None:
        raise InvalidFieldError("replace_buckets needs builds_on: it replaces buckets of an existing state")
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidFieldError(f"replace_buckets must be a non-empty list of bucket numbers, got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < DIGEST_BUCKETS:
            raise InvalidFieldError(
                f"replace_buckets: {item!r} is not a digest bucket (an integer 0..{DIGEST_BUCKETS - 1})"
            )
    for before, after in itertools.pairwise(value):
        if after <= before:
            raise InvalidFieldError(
                f"replace_buckets must be strictly ascending (no repeats): {before} then {after}"
            )
    return tuple(value)


# ------------------------------------------------------------------------------ parsing


def _get(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in data:
        raise HeaderFormatError(f"header field {name} is missing")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise HeaderFormatError(f"header field {name} has the wrong type ({type(value).__name__})")
    return value


def _get_id(data: Mapping[str, Any], name: str) -> str:
    try:
        return validate_id(_get(data, name, str), f"header field {name}")
    except LayoutError as exc:
        raise HeaderFormatError(str(exc)) from exc


def _get_int(data: Mapping[str, Any], name: str, minimum: int = 0) -> int:
    value: int = _get(data, name, int)
    if not minimum <= value <= MAX_SAFE_INTEGER:
        raise HeaderFormatError(f"header field {name} is out of range: {value}")
    return value


def _get_hex(data: Mapping[str, Any], name: str) -> str:
    value: str = _get(data, name, str)
    if not _HEX_RE.fullmatch(value):
        raise HeaderFormatError(f"header field {name} must be 64 lowercase hex digits")
    return value


def _get_b64(data: Mapping[str, Any], name: str, length: int) -> bytes:
    import base64
    import binascii

    text = _get(data, name, str)
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HeaderFormatError(f"header field {name} is not base64: {exc}") from exc
    if len(value) != length:
        raise HeaderFormatError(f"header field {name} must decode to {length} bytes, got {len(value)}")
    return value


def decode_header_json(raw: bytes) -> dict[str, Any]:
    """Parse header bytes and insist they are exactly canonical."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HeaderFormatError(f"header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HeaderFormatError("header is not a JSON object")
    try:
        if canonical_json(data) != raw:
            raise HeaderFormatError("header is not in canonical JSON form (sorted keys, no whitespace)")
    except InvalidFieldError as exc:
        raise HeaderFormatError(f"header holds a value canonical JSON does not allow: {exc}") from exc
    return data


def peek_suite(data: Mapping[str, Any]) -> str:
    suite: str = _get(data, "suite", str)
    return suite


def parse_identity(data: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(sender, sender_key_id, recipient, recipient_key_id), needed before the full parse."""
    return (
        _get_id(data, "sender"),
        _get_hex(data, "sender_key_id"),
        _get_id(data, "recipient"),
        _get_hex(data, "recipient_key_id"),
    )


def parse_header(raw: bytes, data: Mapping[str, Any]) -> PackageHeader:
    """Build the typed header from canonical, signature-verified JSON."""
    if _get(data, "format", int) != FORMAT_VERSION:
        raise HeaderFormatError(f"header format {data['format']!r} is not {FORMAT_VERSION}")
    kind = _get(data, "kind", str)
    if kind not in KINDS:
        raise HeaderFormatError(f"header kind {kind!r} is not one of {', '.join(sorted(KINDS))}")
    try:
        package_id = validate_package_id(_get(data, "package_id", str))
        sequence = validate_sequence(_get(data, "sequence", int))
        builds_on = data.get("builds_on")
        if builds_on is not None:
            validate_sequence(builds_on, "builds_on")
    except LayoutError as exc:
        raise HeaderFormatError(str(exc)) from exc
    if "builds_on" not in data:
        raise HeaderFormatError("header field builds_on is missing")
    if builds_on is not None and builds_on >= sequence:
        raise HeaderFormatError(f"header builds_on {builds_on} is not below sequence {sequence}")
    counts_raw = _get(data, "counts", dict)
    try:
        counts = validate_counts(counts_raw, allow_plaintext=True)
    except InvalidFieldError as exc:
        raise HeaderFormatError(str(exc)) from exc
    if PLAINTEXT_BYTES not in counts:
        raise HeaderFormatError("header counts.plaintext_bytes is missing")
    payload = _get(data, "payload", dict)
    key_wrap = _get(data, "key_wrap", dict)
    expected_state = _get(data, "expected_state", (dict, type(None)))
    manifest = _get(data, "manifest", (dict, type(None)))
    sender, sender_key_id, recipient, recipient_key_id = parse_identity(data)
    created = parse_time(data.get("created"), "created")
    expires = parse_time(data.get("expires"), "expires")
    replace_buckets = None
    if "replace_buckets" in data:
        try:
            replace_buckets = validate_replace_buckets(data["replace_buckets"], kind, builds_on)
        except InvalidFieldError as exc:
            raise HeaderFormatError(f"header field {exc}") from exc
    return PackageHeader(
        suite=peek_suite(data),
        package_id=package_id,
        kind=kind,
        sender=sender,
        sender_key_id=sender_key_id,
        recipient=recipient,
        recipient_key_id=recipient_key_id,
        subscription=_get_id(data, "subscription"),
        sequence=sequence,
        builds_on=builds_on,
        created=created,
        expires=expires,
        catalog=_get(data, "catalog", dict),
        schema=_get(data, "schema", list),
        counts=counts,
        expected_state=expected_state,
        manifest=manifest,
        payload=PayloadInfo(
            chunk_size=_get_int(payload, "chunk_size", 1),
            chunks=_get_int(payload, "chunks", 1),
            ciphertext_bytes=_get_int(payload, "ciphertext_bytes"),
            digest=_get_hex(payload, "digest"),
        ),
        key_wrap=KeyWrap(
            ephemeral_public_key=_get_b64(key_wrap, "ephemeral_public_key", 32),
            wrapped_key=_get_b64(key_wrap, "wrapped_key", 48),
        ),
        raw=raw,
        replace_buckets=replace_buckets,
    )
