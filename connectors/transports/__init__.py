"""Transports: how the agent reaches the platform's exchange directory (SFTP or a local directory).

Use :func:`open_transport` with the config's ``platform`` section; everything else talks to the
:class:`Transport` interface only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.transports.backoff import RetryPolicy
from connectors.transports.base import (
    AuthenticationFailed,
    CheckResult,
    HostKeyError,
    RemoteEntry,
    RemoteFileNotFound,
    RemoteFileTooLarge,
    Transport,
    TransportError,
    TransportUnavailable,
)
from connectors.transports.local import LocalTransport
from connectors.transports.sftp import SftpSettings, SftpTransport

if TYPE_CHECKING:
    from agent.config import PlatformSection

__all__ = [
    "AuthenticationFailed",
    "CheckResult",
    "HostKeyError",
    "LocalTransport",
    "RemoteEntry",
    "RemoteFileNotFound",
    "RemoteFileTooLarge",
    "RetryPolicy",
    "SftpSettings",
    "SftpTransport",
    "Transport",
    "TransportError",
    "TransportUnavailable",
    "open_transport",
    "sftp_settings",
]


def sftp_settings(platform: PlatformSection, retry: RetryPolicy | None = None) -> SftpSettings:
    """The SFTP transport's settings from a validated ``platform`` section."""
    endpoint = platform.sftp
    if platform.identity_file is None:  # the config model requires it for sftp; keep mypy honest
        raise TransportError("platform.identity_file: required for sftp")
    return SftpSettings(
        host=endpoint.host,
        port=endpoint.port,
        username=endpoint.username,
        root=endpoint.path,
        host_key=platform.host_key,
        identity_file=platform.identity_file,
        connect_timeout=platform.connect_timeout.total_seconds(),
        operation_timeout=platform.operation_timeout.total_seconds(),
        keepalive_interval=platform.keepalive_interval.total_seconds(),
        retry=retry or RetryPolicy(),
    )


def open_transport(platform: PlatformSection, retry: RetryPolicy | None = None) -> Transport:
    """The transport the config names. Connecting is lazy: the first operation (or ``check()``)."""
    if platform.transport == "local":
        return LocalTransport(platform.local_dir)
    return SftpTransport(sftp_settings(platform, retry))
