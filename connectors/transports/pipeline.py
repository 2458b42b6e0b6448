"""Pipelined SFTP transfers: a sliding window of large READ or WRITE requests in flight, every
answer checked, in the caller's thread.

Why not paramiko's own: its ``prefetch`` starts a background thread per file that dies noisily
when the connection breaks, polls with sleeps, and falls back to one-at-a-time reads after a
short answer; and its pipelined writes never look at the WRITE statuses (nor at CLOSE's), so a
full disk on the server silently yields a truncated file. Here at most ``depth`` requests
(``depth * request_size`` bytes) are in flight; a short read is completed and the request size
adapts; a failed WRITE, fsync or CLOSE raises. Built on paramiko's request/response primitives
(``_async_request``/``_read_response``, the ones ``SFTPFile`` itself uses).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes


class ShrunkError(Exception):
    """The server reported end of file before the size it had announced."""


class _Answers:
    """Receives the answers to our requests (paramiko hands them to ``_async_response``)."""

    def __init__(self) -> None:
        self.by_number: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, kind: int, msg: paramiko.Message, number: int) -> None:
        self.by_number[number] = (kind, msg)


def read_range(
    sftp: paramiko.SFTPClient, handle: bytes, offset: int, end: int, request_size: int, depth: int
) -> Iterator[bytes]:
    """Yield the bytes of ``[offset, end)`` of the open file ``handle``, in order."""
    client: Any = sftp  # the request primitives are not in paramiko's type stubs
    answers = _Answers()
    in_flight: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
    next_offset = offset

    def request(at: int, length: int) -> int:
        number: int = client._async_request(answers, CMD_READ, handle, int64(at), int(length))
        return number

    def answer(number: int, at: int) -> bytes:
        while number not in answers.by_number:
            client._read_response()
        kind, msg = answers.by_number.pop(number)
        if kind == CMD_STATUS:
            try:
                client._convert_status(msg)
            except EOFError:
                raise ShrunkError(f"end of file at {at}, expected {end} bytes") from None
            raise paramiko.SFTPError(f"READ at {at} answered with status OK and no data")
        if kind != CMD_DATA:
            raise paramiko.SFTPError(f"READ at {at}: unexpected answer type {kind}")
        data: bytes = msg.get_string()
        if not data:
            raise ShrunkError(f"no data at {at}, expected {end} bytes")
        return data

    while in_flight or next_offset < end:
        while len(in_flight) < depth and next_offset < end:
            length = min(request_size, end - next_offset)
            in_flight.append((request(next_offset, length), next_offset, length))
            next_offset += length
        number, at, length = in_flight.popleft()
        data = answer(number, at)
        yield data
        got = len(data)
        if got > length:
            raise paramiko.SFTPError(f"READ at {at}: {got} bytes answered for {length} requested")
        if got < length:  # the server caps reads below our request size: adapt, fetch the rest
            request_size = max(got, 4096)
            while got < length:
                data = answer(request(at + got, length - got), at + got)
                yield data
                got += len(data)


def upload(
    sftp: paramiko.SFTPClient, path: str, source: BinaryIO, request_size: int, depth: int, mode: int = 0o640
) -> int:
    """Create ``path`` (it must not exist), write all of ``source`` into it, have the server
    fsync it where it can, and close it — each step's answer checked. Returns the bytes written."""
    client: Any = sftp
    attrs = SFTPAttributes()
    attrs.st_mode = mode
    kind, msg = client._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, attrs)
    if kind != CMD_HANDLE:
        raise paramiko.SFTPError(f"OPEN {path}: unexpected answer type {kind}")
    handle: bytes = msg.get_binary()
    answers = _Answers()
    in_flight: deque[tuple[int, int]] = deque()  # (request number, offset)

    def settle(number: int, at: int) -> None:
        while number not in answers.by_number:
            client._read_response()
        kind, msg = answers.by_number.pop(number)
        if kind != CMD_STATUS:
            raise paramiko.SFTPError(f"WRITE at {at}: unexpected answer type {kind}")
        client._convert_status(msg)  # raises OSError on a failed write

    offset = 0
    failed = True
    try:
        while block := source.read(request_size):
            if len(in_flight) >= depth:
                settle(*in_flight.popleft())
            number = client._async_request(answers, CMD_WRITE, handle, int64(offset), block)
            in_flight.append((number, offset))
            offset += len(block)
        while in_flight:
            settle(*in_flight.popleft())
        _fsync(client, handle)
        failed = False
    finally:
        if failed:
            # Closed after a failure too (or the handle leaks on the server), without waiting: the
            # connection may be the thing that failed, and the failure in flight is the one to report.
            with contextlib.suppress(Exception):
                client._async_request(type(None), CMD_CLOSE, handle)
    client._request(CMD_CLOSE, handle)  # a failed CLOSE can mean lost data: it is an error
    return offset


def _fsync(client: Any, handle: bytes) -> None:
    """Ask the server to flush the file to disk (OpenSSH's fsync@openssh.com), where supported."""
    try:
        client._request(CMD_EXTENDED, "fsync@openssh.com", handle)
    except OSError as exc:
        if "unsupported" not in str(exc).lower():
            raise
