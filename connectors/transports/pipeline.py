"""Pipelined SFTP reads: a sliding window of large READ requests in flight, answers consumed in
file order, in the caller's thread.

paramiko's own ``prefetch`` starts a background thread per file that dies noisily when the
connection breaks, polls with sleeps, and falls back to one-at-a-time reads after a short
answer. This reader keeps at most ``depth`` requests (``depth * request_size`` bytes) in flight,
asks again for the rest of a short answer and shrinks its request size to what the server
delivers, and raises in the caller, where the retry logic is. It uses paramiko's request/
response primitives (``_async_request``/``_read_response``, the ones ``SFTPFile`` is built on).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import paramiko
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64


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
