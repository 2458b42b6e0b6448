"""The platform's exchange directory over SFTP (paramiko), as the hub serves it (docs/hub.md).

Trust: the server's host key must equal the one pinned in the config; there is no "accept on
first use" — an unpinned or different key is refused with both fingerprints in the error, and
the operator decides out of band. Authentication is by the agent's own key only (no password,
no ssh-agent, no ~/.ssh keys).

Robustness: connect and per-operation timeouts; keepalives; a broken connection is re-opened
with exponential backoff and jitter, bounded per stall (:mod:`connectors.transports.backoff`);
a download continues from the bytes already on disk.

Speed: whole-file pipelined transfers — reads keep a bounded number of large requests in
flight, writes are pipelined — so throughput is not a function of the round trip.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar, cast

import paramiko
import structlog

from connectors.transports.backoff import Backoff, RetryPolicy
from connectors.transports.base import (
    DEFAULT_MAX_READ,
    AuthenticationFailed,
    CheckResult,
    HostKeyError,
    Progress,
    RemoteEntry,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    Transport,
    TransportError,
    TransportUnavailable,
    is_listed,
    partial_size,
    remote_path,
    temporary_name,
)
from connectors.transports.pipeline import ShrunkError, read_range, upload

log = structlog.get_logger(__name__)
T = TypeVar("T")

# OpenSSH's sftp-server answers reads of up to 256 KiB - 1 KiB (SFTP_MAX_READ_LENGTH); a server
# with a lower limit answers short and the reader adapts (connectors/transports/pipeline.py).
MAX_REQUEST_SIZE = 255 * 1024
# A too-large WRITE is an error, not a short write, and servers differ in what they accept: write
# in the 32 KiB every SFTP server takes (as OpenSSH's sftp client does), 64 in flight. Uploads
# are reports, small; this costs nothing that matters.
WRITE_SIZE, WRITES_IN_FLIGHT = 32 * 1024, 64
# Prefer AES-GCM (AES-NI, one pass for cipher and MAC), then CTR; never CBC or 3DES.
_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


class LocalFileError(TransportError):
    """The local side of a transfer failed (disk full, permissions): retrying the server won't help."""


@dataclass(frozen=True)
class SftpSettings:
    """Everything the SFTP transport needs; built from the agent config's ``platform`` section."""

    host: str
    username: str
    identity_file: Path
    host_key: str | None
    port: int = 22
    root: str = "/"
    connect_timeout: float = 15.0
    operation_timeout: float = 60.0
    keepalive_interval: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Reads in flight: 16 x 255 KiB ~ 4 MiB, enough for a WAN round trip. The SSH window matches
    # it: paramiko's channel buffer moves its whole backlog on every read, so a window far above
    # what is in flight only costs CPU (measured: 32 MiB used ~1.7x the CPU of 4 MiB on loopback).
    prefetch_requests: int = 16
    request_size: int = MAX_REQUEST_SIZE
    window_size: int = 4 * 1024 * 1024
    max_packet_size: int = 256 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch_requests <= 256:
            raise ValueError(f"prefetch_requests must be 1..256, got {self.prefetch_requests}")
        if not 4096 <= self.request_size <= MAX_REQUEST_SIZE:
            raise ValueError(f"request_size must be 4096..{MAX_REQUEST_SIZE}, got {self.request_size}")


def parse_host_key(line: str) -> paramiko.PKey:
    """The pinned key from its public key line: ``ssh-ed25519 AAAA… [comment]``, optionally with
    a leading host field as in known_hosts. ``rsa-sha2-*`` names mean the ``ssh-rsa`` key."""
    fields = line.split()
    start = 1 if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-", "rsa-sha2-")) else 0
    if len(fields) < start + 2:
        raise HostKeyError("pinned host key: expected 'TYPE BASE64', e.g. 'ssh-ed25519 AAAAC3Nza…'")
    key_type = "ssh-rsa" if fields[start].startswith("rsa-sha2-") else fields[start]
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(fields[start + 1], validate=True))
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise HostKeyError(f"pinned host key of type {key_type!r} cannot be read: {exc}") from exc


def load_identity(path: Path) -> paramiko.PKey:
    """The agent's SSH private key; refused if others can read it. Errors never show key content."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise TransportError(f"identity file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise TransportError(
            f"identity file {path} is accessible by group/others (mode {mode:04o}): chmod 600 it"
        )
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException as exc:
        raise TransportError(
            f"identity file {path} is passphrase-protected; the agent needs an unencrypted key"
        ) from exc
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise TransportError(
            f"identity file {path} is not a usable SSH private key ({type(exc).__name__})"
        ) from None


def _describe(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


@contextlib.contextmanager
def _closing(handle: paramiko.SFTPFile) -> Iterator[paramiko.SFTPFile]:
    """Close the remote file; when the body already failed, a failing close must not mask why."""
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(Exception):
            handle.close()
        raise
    handle.close()


class SftpTransport(Transport):
    """One agent's view of its chrooted exchange directory on the platform."""

    def __init__(
        self,
        settings: SftpSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.description = f"sftp://{settings.username}@{settings.host}:{settings.port}{settings.root}"
        self._pinned = parse_host_key(settings.host_key) if settings.host_key else None
        self._identity = load_identity(settings.identity_file)
        self._sleep = sleep
        self._ssh: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.connections = 0  # how many times a connection was opened (tests, metrics)
        self._orphans: list[str] = []

    # -- connection -----------------------------------------------------------------------
    def _connect(self) -> paramiko.SFTPClient:
        s = self.settings
        sock = socket.create_connection((s.host, s.port), timeout=s.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ssh = paramiko.Transport(
                sock, default_window_size=s.window_size, default_max_packet_size=s.max_packet_size
            )
        except BaseException:
            sock.close()
            raise
        try:
            ssh.banner_timeout = ssh.handshake_timeout = ssh.auth_timeout = s.connect_timeout
            options = ssh.get_security_options()
            options.ciphers = tuple(c for c in _CIPHERS if c in options.ciphers)
            if self._pinned is not None:  # ask for the pinned key's type first
                preferred = self._pinned.get_name()
                options.key_types = (preferred, *(k for k in options.key_types if k != preferred))
            ssh.start_client(timeout=s.connect_timeout)
            self._verify_host_key(ssh.get_remote_server_key())
            try:
                ssh.auth_publickey(s.username, self._identity)
            except paramiko.AuthenticationException as exc:
                raise AuthenticationFailed(
                    f"{self.description}: the server refused the agent's key "
                    f"{_describe(self._identity)} for user {s.username!r} ({exc})"
                ) from exc
            ssh.set_keepalive(max(1, int(s.keepalive_interval)))
            sftp = paramiko.SFTPClient.from_transport(
                ssh, window_size=s.window_size, max_packet_size=s.max_packet_size
            )
            if sftp is None:
                raise TransportError(f"{self.description}: the server opened no SFTP channel")
            sftp.get_channel().settimeout(s.operation_timeout)  # type: ignore[union-attr]
        except BaseException:
            ssh.close()
            raise
        self._ssh, self._sftp = ssh, sftp
        self.connections += 1
        log.info("sftp.connected", server=self.description, host_key=_describe(ssh.get_remote_server_key()))
        return sftp

    def _verify_host_key(self, offered: paramiko.PKey) -> None:
        where = f"{self.settings.host}:{self.settings.port}"
        if self._pinned is None:
            raise HostKeyError(
                f"refusing {where}: no host key is pinned (platform.host_key); the server offered "
                f"{_describe(offered)} — confirm it with the platform out of band, then pin its key line"
            )
        if offered.get_name() != self._pinned.get_name() or offered.asbytes() != self._pinned.asbytes():
            raise HostKeyError(
                f"refusing {where}: host key mismatch — the server offered {_describe(offered)}, "
                f"the pinned key is {_describe(self._pinned)} (a changed server key or an impostor)"
            )

    def _connected(self) -> bool:
        """Whether the SFTP session still works. The transport alone is not enough: after the
        server drops the connection paramiko may report it active for a moment while the SFTP
        channel is already closed (and every request on it fails with "Socket is closed")."""
        if self._sftp is None or self._ssh is None or not self._ssh.is_active():
            return False
        channel = self._sftp.get_channel()
        return channel is not None and not channel.closed

    def _client(self) -> paramiko.SFTPClient:
        if self._sftp is not None and self._connected():
            return self._sftp
        self._drop()
        return self._connect()

    def _drop(self) -> None:
        sftp, ssh = self._sftp, self._ssh
        self._sftp = self._ssh = None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()
        if ssh is not None:
            with contextlib.suppress(Exception):
                ssh.close()

    def close(self) -> None:
        self._drop()

    def _is_connection_failure(self, exc: BaseException) -> bool:
        if isinstance(exc, TransportError):
            return False
        if isinstance(
            exc, (TimeoutError, EOFError, ConnectionError, paramiko.SSHException, paramiko.SFTPError)
        ):
            return True
        # An SFTP status (no such file, permission denied) arrives as OSError on a live connection.
        return isinstance(exc, OSError) and not self._connected()

    def _translate(self, what: str, exc: BaseException) -> TransportError:
        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, FileNotFoundError):
            return RemoteFileNotFound(f"{what}: no such file on {self.description}")
        if isinstance(exc, PermissionError):
            return TransportError(f"{what}: permission denied on {self.description}")
        return TransportError(f"{what}: {exc} ({self.description})")

    def _retrying(
        self, what: str, operation: Callable[[paramiko.SFTPClient], T], backoff: Backoff | None = None
    ) -> T:
        backoff = backoff or Backoff(self.settings.retry, sleep=self._sleep)
        while True:
            try:
                return operation(self._client())
            except Exception as exc:
                if not self._is_connection_failure(exc):
                    if isinstance(exc, LocalFileError):
                        self._drop()  # requests of the abandoned transfer may still be in flight
                    raise self._translate(what, exc) from exc
                self._drop()
                log.warning(
                    "sftp.retry",
                    operation=what,
                    server=self.description,
                    error=f"{type(exc).__name__}: {exc}",
                    failures=backoff.failures + 1,
                )
                if not backoff.wait():
                    raise TransportUnavailable(
                        f"{what}: {self.description} unreachable after {backoff.failures} attempts "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc

    def _abs(self, remote: str) -> str:
        return str(PurePosixPath(self.settings.root) / remote_path(remote))

    # -- operations -----------------------------------------------------------------------
    def listdir(self, directory: str) -> list[RemoteEntry]:
        path = self._abs(directory)

        def run(sftp: paramiko.SFTPClient) -> list[RemoteEntry]:
            return sorted(
                (
                    RemoteEntry(a.filename, a.st_size or 0, float(a.st_mtime or 0))
                    for a in sftp.listdir_attr(path)
                    if is_listed(a.filename) and a.st_mode is not None and stat.S_ISREG(a.st_mode)
                ),
                key=lambda e: e.name,
            )

        return self._retrying(f"list {directory}", run)

    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> int:
        path = self._abs(remote)
        backoff = Backoff(self.settings.retry, sleep=self._sleep)
        first_seen: list[tuple[int, int]] = []  # (size, mtime) at the first attempt

        def run(sftp: paramiko.SFTPClient) -> int:
            before = partial_size(local)
            try:
                return self._fetch_once(sftp, path, remote, local, progress, first_seen)
            finally:
                if partial_size(local) > before:
                    backoff.reset()  # progress: the next stall gets the full set of retries

        size = self._retrying(f"fetch {remote}", run, backoff)
        done = partial_size(local)
        if done != size:
            raise TransportError(f"fetch {remote}: {done} bytes on disk, the server's file has {size}")
        return size

    def _fetch_once(
        self,
        sftp: paramiko.SFTPClient,
        path: str,
        remote: str,
        local: Path,
        progress: Progress | None,
        first_seen: list[tuple[int, int]],
    ) -> int:
        with _closing(sftp.open(path, "rb")) as handle:
            attrs = handle.stat()
            size = attrs.st_size or 0
            seen = (size, attrs.st_mtime or 0)
            offset = partial_size(local)
            replaced = bool(first_seen) and first_seen[0] != seen
            if replaced:
                log.warning("sftp.replaced", file=remote, before=first_seen[0], now=seen)
            first_seen[:] = [seen]
            if offset > size or replaced:  # what we have is not a prefix of this file: start over
                local.unlink(missing_ok=True)
                offset = 0
            try:
                out = local.open("ab")  # created even for an empty file
            except OSError as exc:
                raise LocalFileError(f"fetch {remote}: cannot write {local}: {exc.strerror}") from exc
            if offset == size:
                out.close()
                return size
            with out:
                if offset:
                    log.info("sftp.resume", file=remote, offset=offset, size=size)
                for data in self._read_range(sftp, handle, remote, offset, size):
                    try:
                        out.write(data)
                    except OSError as exc:
                        raise LocalFileError(f"fetch {remote}: cannot write {local}: {exc.strerror}") from exc
                    offset += len(data)
                    if progress is not None:
                        progress(offset, size)
        return size

    def _read_range(
        self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, remote: str, offset: int, end: int
    ) -> Iterator[bytes]:
        s = self.settings
        try:
            yield from read_range(
                sftp, cast(bytes, handle.handle), offset, end, s.request_size, s.prefetch_requests
            )
        except ShrunkError as exc:
            raise TransportError(f"{remote}: the file shrank on the server while being read ({exc})") from exc

    def read(self, remote: str, max_bytes: int = DEFAULT_MAX_READ) -> bytes:
        path = self._abs(remote)

        def run(sftp: paramiko.SFTPClient) -> bytes:
            with _closing(sftp.open(path, "rb")) as handle:
                size = handle.stat().st_size or 0
                if size > max_bytes:
                    raise RemoteFileTooLarge(
                        f"{remote}: {size} bytes, more than a control file's {max_bytes}"
                    )
                data = b"".join(self._read_range(sftp, handle, remote, 0, size))
            if len(data) != size:
                raise TransportError(f"read {remote}: got {len(data)} bytes, the server's file has {size}")
            return data

        return self._retrying(f"read {remote}", run)

    def put(self, local: Path, remote: str) -> None:
        target = remote_path(remote)
        final = self._abs(remote)

        def run(sftp: paramiko.SFTPClient) -> None:
            tmp = self._abs(str(temporary_name(target)))
            # Remembered before the first byte goes out and forgotten only once it is gone: after a
            # dropped connection paramiko may still report the transport active for a moment, so
            # whether the remove below can work is only known by trying it.
            self._orphans.append(tmp)
            try:
                self._upload(sftp, local, tmp)
                try:
                    sftp.posix_rename(tmp, final)
                except OSError:
                    if not self._connected():
                        raise
                    sftp.rename(tmp, final)  # a server without the posix-rename extension
            except BaseException:
                self._remove_orphan(sftp, tmp)
                raise
            self._orphans.remove(tmp)  # renamed: it is the target now
            for orphan in list(self._orphans):
                if not self._remove_orphan(sftp, orphan):
                    break  # the connection failed again: keep the rest for the next upload

        self._retrying(f"put {remote}", run)

    def _remove_orphan(self, sftp: paramiko.SFTPClient, tmp: str) -> bool:
        """Remove a temporary of an upload that did not complete; forget it only once it is gone.

        Readers skip temporary names, so one left behind is untidy, not wrong: any failure here
        keeps it for the next successful upload rather than masking why the upload failed.
        Returns False when the connection itself failed (no point trying the others on it)."""
        try:
            sftp.remove(tmp)
        except FileNotFoundError:
            pass  # never created (the open failed) or already gone
        except Exception as exc:
            log.info("sftp.temporary_kept", file=tmp, error=f"{type(exc).__name__}: {exc}")
            return not self._is_connection_failure(exc)
        self._orphans.remove(tmp)
        return True

    def _upload(self, sftp: paramiko.SFTPClient, local: Path, tmp: str) -> None:
        try:
            src = local.open("rb")
        except OSError as exc:
            raise LocalFileError(f"put: cannot read {local}: {exc.strerror}") from exc
        with src:
            written = upload(sftp, tmp, src, WRITE_SIZE, WRITES_IN_FLIGHT)
        stored = sftp.stat(tmp).st_size
        if stored != written:
            raise TransportError(f"put: the server stored {stored} of {written} bytes of {tmp}")

    def check(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        try:
            self._client()
        except (TransportError, OSError, EOFError, paramiko.SSHException) as exc:
            self._drop()
            return [CheckResult(self.description, False, str(exc) or type(exc).__name__)]
        assert self._ssh is not None
        results.append(
            CheckResult(
                self.description,
                True,
                f"connected; host key {_describe(self._ssh.get_remote_server_key())} matches the pinned key; "
                f"authenticated as {self.settings.username}",
            )
        )
        for directory in ("inbox", "control"):
            try:
                count = len(self.listdir(directory))
                results.append(CheckResult(f"{self.description} {directory}/", True, f"{count} files"))
            except TransportError as exc:
                results.append(CheckResult(f"{self.description} {directory}/", False, str(exc)))
        probe = self._abs(str(temporary_name(PurePosixPath("outbox/edu-agent-check"))))
        try:
            sftp = self._client()
            with sftp.open(probe, "wb") as handle:
                handle.write(b"")
            sftp.remove(probe)
            results.append(CheckResult(f"{self.description} outbox/", True, "writable"))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            results.append(CheckResult(f"{self.description} outbox/", False, f"not writable: {exc}"))
        return results
