"""Party identities: an Ed25519 signing key and an X25519 encryption key per party.

A key directory holds ``signing.key`` and ``encryption.key`` (PKCS#8 PEM, mode 0600)
and ``bundle.json`` (the public bundle, safe to publish).  The directory is 0700.
Private key files readable by group or others are refused on load rather than used:
a leaked platform or agent key breaks every guarantee of the package format.

Key ids are fingerprints: ``sha256(<algorithm> ":" <raw public key>)`` in hex, so a
key id can never be confused across algorithms (a future SM2 key gets its own).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from protocol.errors import KeyFormatError, KeyPermissionError, KeysError, KeysExistError, LayoutError
from protocol.layout import validate_id

SIGNING_KEY_FILE = "signing.key"
ENCRYPTION_KEY_FILE = "encryption.key"
BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "edu-sync-bundle-1"
SIGNING_ALGORITHM = "ed25519"
ENCRYPTION_ALGORITHM = "x25519"


def key_id(algorithm: str, raw_public_key: bytes) -> str:
    """Fingerprint of a public key: hex SHA-256 over ``algorithm:raw``."""
    return hashlib.sha256(algorithm.encode("ascii") + b":" + raw_public_key).hexdigest()


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class PublicBundle:
    """What a party publishes: id, both public keys (raw 32 bytes) and their key ids."""

    party_id: str
    signing_public_key: bytes
    encryption_public_key: bytes

    def __post_init__(self) -> None:
        try:
            validate_id(self.party_id, "party id")
        except LayoutError as exc:
            raise KeyFormatError(str(exc)) from exc
        for name in ("signing_public_key", "encryption_public_key"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 32:
                raise KeyFormatError(f"{name} must be 32 raw bytes")

    @property
    def signing_key_id(self) -> str:
        return key_id(SIGNING_ALGORITHM, self.signing_public_key)

    @property
    def encryption_key_id(self) -> str:
        return key_id(ENCRYPTION_ALGORITHM, self.encryption_public_key)

    def signing_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.signing_public_key)

    def encryption_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.encryption_public_key)

    def to_dict(self) -> dict[str, str]:
        return {
            "format": BUNDLE_FORMAT,
            "party_id": self.party_id,
            "signing_algorithm": SIGNING_ALGORITHM,
            "signing_public_key": base64.b64encode(self.signing_public_key).decode("ascii"),
            "signing_key_id": self.signing_key_id,
            "encryption_algorithm": ENCRYPTION_ALGORITHM,
            "encryption_public_key": base64.b64encode(self.encryption_public_key).decode("ascii"),
            "encryption_key_id": self.encryption_key_id,
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> PublicBundle:
        if not isinstance(data, dict):
            raise KeyFormatError("public bundle must be a JSON object")
        if data.get("format") != BUNDLE_FORMAT:
            raise KeyFormatError(
                f"public bundle format must be {BUNDLE_FORMAT!r}, got {data.get('format')!r}"
            )
        if data.get("signing_algorithm") != SIGNING_ALGORITHM:
            raise KeyFormatError(f"unsupported signing algorithm {data.get('signing_algorithm')!r}")
        if data.get("encryption_algorithm") != ENCRYPTION_ALGORITHM:
            raise KeyFormatError(f"unsupported encryption algorithm {data.get('encryption_algorithm')!r}")
        bundle = cls(
            party_id=data.get("party_id"),  # type: ignore[arg-type]  # validated in __post_init__
            signing_public_key=_b64_field(data, "signing_public_key"),
            encryption_public_key=_b64_field(data, "encryption_public_key"),
        )
        for name in ("signing_key_id", "encryption_key_id"):
            if data.get(name) != getattr(bundle, name):
                raise KeyFormatError(
                    f"public bundle of {bundle.party_id!r}: {name} {data.get(name)!r} "
                    "does not match the fingerprint of its public key"
                )
        return bundle

    @classmethod
    def from_json(cls, text: str | bytes) -> PublicBundle:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyFormatError(f"public bundle is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _b64_field(data: dict[str, Any], name: str) -> bytes:
    value = data.get(name)
    if not isinstance(value, str):
        raise KeyFormatError(f"public bundle field {name} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"public bundle field {name} is not valid base64: {exc}") from exc


@dataclass(frozen=True)
class PartyKeys:
    """A party's private identity: id, Ed25519 signing key, X25519 encryption key."""

    party_id: str
    signing_key: Ed25519PrivateKey
    encryption_key: X25519PrivateKey

    def __post_init__(self) -> None:
        try:
            validate_id(self.party_id, "party id")
        except LayoutError as exc:
            raise KeyFormatError(str(exc)) from exc

    @classmethod
    def generate(cls, party_id: str) -> PartyKeys:
        return cls(party_id, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, party_id: str, signing: bytes, encryption: bytes) -> PartyKeys:
        """Keys from raw 32-byte private keys (test vectors, HSM exports)."""
        return cls(
            party_id,
            Ed25519PrivateKey.from_private_bytes(signing),
            X25519PrivateKey.from_private_bytes(encryption),
        )

    def public_bundle(self) -> PublicBundle:
        return PublicBundle(
            self.party_id,
            _raw_public(self.signing_key.public_key()),
            _raw_public(self.encryption_key.public_key()),
        )

    def __repr__(self) -> str:  # never print private key material
        return f"PartyKeys(party_id={self.party_id!r}, <private keys hidden>)"


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we promise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keys(directory: str | os.PathLike[str], party_id: str) -> PartyKeys:
    """Create a new identity in ``directory`` (created 0700); never overwrites keys."""
    path = Path(directory)
    validate_id(party_id, "party id")
    existing = [n for n in (SIGNING_KEY_FILE, ENCRYPTION_KEY_FILE, BUNDLE_FILE) if (path / n).exists()]
    if existing:
        raise KeysExistError(
            f"{path} already holds {', '.join(existing)}; refusing to overwrite an existing identity"
        )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    keys = PartyKeys.generate(party_id)
    try:
        _write_new(path / SIGNING_KEY_FILE, _pem(keys.signing_key), 0o600)
        _write_new(path / ENCRYPTION_KEY_FILE, _pem(keys.encryption_key), 0o600)
        bundle = keys.public_bundle().to_dict()
        bundle_json = json.dumps(bundle, sort_keys=True, indent=2) + "\n"
        _write_new(path / BUNDLE_FILE, bundle_json.encode("utf-8"), 0o644)
    except FileExistsError as exc:
        raise KeysExistError(f"{exc.filename} appeared while creating keys; refusing to overwrite") from exc
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return keys


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError as exc:
        raise KeyFormatError(f"private key file {path} does not exist") from exc
    except OSError as exc:
        raise KeysError(f"cannot open private key file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFormatError(f"private key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyPermissionError(
                f"private key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must not be "
                f"accessible by group or others (run: chmod 600 {path})"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(64 * 1024)
    finally:
        os.close(fd)


def load_keys(directory: str | os.PathLike[str]) -> PartyKeys:
    """Load an identity created by :func:`init_keys`, refusing loosely-permissioned key files."""
    path = Path(directory)
    bundle = load_bundle(path / BUNDLE_FILE)
    signing = _load_pem(path / SIGNING_KEY_FILE, Ed25519PrivateKey)
    encryption = _load_pem(path / ENCRYPTION_KEY_FILE, X25519PrivateKey)
    keys = PartyKeys(bundle.party_id, signing, encryption)
    if keys.public_bundle() != bundle:
        raise KeyFormatError(f"{path / BUNDLE_FILE} does not match the private keys in {path}")
    return keys


def _load_pem(path: Path, expected: type[Any]) -> Any:
    data = _read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"{path} is not an unencrypted PKCS#8 PEM private key: {exc}") from exc
    if not isinstance(key, expected):
        raise KeyFormatError(f"{path} holds a {type(key).__name__}, expected {expected.__name__}")
    return key


def load_bundle(path: str | os.PathLike[str]) -> PublicBundle:
    """Read a public bundle JSON file (as printed by ``edu-agent keys init``)."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise KeyFormatError(f"public bundle {path} does not exist") from exc
    except OSError as exc:
        raise KeysError(f"cannot read public bundle {path}: {exc.strerror}") from exc
    try:
        return PublicBundle.from_json(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{path}: {exc}") from exc
