"""Property tests: arbitrary payloads round-trip; arbitrary corruption never yields plaintext."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import PackageError
from protocol.header import MAX_SAFE_INTEGER
from protocol.package import open_package, read_header
from tests.vectors.helpers import AGENT, NOW, TRUSTED, read_all, write_package

payloads = st.one_of(
    st.binary(max_size=6000),
    st.text(max_size=2000).map(str.encode),  # compressible, multi-byte UTF-8
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=50), st.integers(1, 300)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    payload=payloads,
    chunk_size=st.sampled_from([256, 300, 1024, 4096]),
    write_size=st.integers(1, 5000),
)
def test_round_trip(payload: bytes, chunk_size: int, write_size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_package(Path(tmp), payload, chunk_size=chunk_size, write_size=write_size)
        assert read_all(path) == payload
        with open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
            stream = package.plaintext()
            pieces = []
            while block := stream.read(write_size):
                pieces.append(block)
            assert b"".join(pieces) == payload


@SETTINGS
@given(catalog=st.dictionaries(st.text(max_size=10), json_values, max_size=5), manifest=json_values)
def test_header_values_round_trip(catalog: dict[str, Any], manifest: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_package(Path(tmp), b"x", catalog=catalog, manifest={"value": manifest})
        header = read_header(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW)
        assert header.catalog == catalog
        assert header.manifest == {"value": manifest}


corruptions = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10**9), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**9), st.integers(1, 64)),
    st.tuples(st.just("replace"), st.integers(0, 10**9), st.integers(0, 255)),
)


def corrupt(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, where, arg = how
    if not data:
        return bytes([arg & 0xFF]) if kind == "insert" else data
    where %= len(data)
    out = bytearray(data)
    if kind == "flip":
        out[where] ^= 1 << arg
    elif kind == "truncate":
        del out[where:]
    elif kind == "insert":
        out.insert(where, arg)
    elif kind == "delete":
        del out[where : where + arg]
    elif out[where] != arg:
        out[where] = arg
    else:
        out[where] ^= 0xFF
    return bytes(out)


@settings(SETTINGS, max_examples=200)
@given(payload=st.binary(min_size=1, max_size=5000), hows=st.lists(corruptions, min_size=1, max_size=3))
def test_corruption_never_yields_plaintext(payload: bytes, hows: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_package(Path(tmp), payload, chunk_size=256)
        data = path.read_bytes()
        damaged = data
        for how in hows:
            damaged = corrupt(damaged, how)
        if damaged == data:
            return
        path.write_bytes(damaged)
        released = bytearray()
        try:
            with open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
                for block in package.iter_plaintext(64):
                    released += block
        except PackageError:
            assert released == b""
            return
        raise AssertionError(f"corrupted package accepted ({len(released)} bytes released)")


@st.composite
def zstd_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Concatenated zstd frames (assorted parameters, some skippable) and their end offsets."""
    import zstandard

    stream, ends = b"", list[int]()
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()) and ends:
            skip = draw(st.binary(max_size=20))
            stream += (0x184D2A50 + draw(st.integers(0, 15))).to_bytes(4, "little")
            stream += len(skip).to_bytes(4, "little") + skip
        data = draw(
            st.binary(max_size=3000)
            | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=9), st.integers(1, 40000))
        )
        compressor = zstandard.ZstdCompressor(
            level=draw(st.integers(1, 5)),
            write_checksum=draw(st.booleans()),
            write_content_size=draw(st.booleans()),
        )
        if draw(st.booleans()):
            stream += compressor.compress(data)
        else:
            obj = compressor.compressobj()
            stream += obj.compress(data) + obj.flush()
        ends.append(len(stream))
    return stream, ends


@settings(SETTINGS, max_examples=150)
@given(sample=zstd_streams(), split=st.integers(1, 500), cut=st.integers(0, 10**6))
def test_zstd_frame_walker_knows_where_frames_end(
    sample: tuple[bytes, list[int]], split: int, cut: int
) -> None:
    from protocol.package import ZstdFrameWalker

    stream, ends = sample
    walker = ZstdFrameWalker()
    for start in range(0, len(stream), split):  # any feeding granularity
        walker.feed(memoryview(stream[start : start + split]))
    assert walker.at_boundary and walker.frames == len(ends)
    prefix = cut % len(stream)
    partial = ZstdFrameWalker()
    partial.feed(memoryview(stream[:prefix]))
    assert partial.at_boundary == (prefix == 0 or prefix in ends or _ends_a_skippable(stream, prefix, ends))


def _ends_a_skippable(stream: bytes, prefix: int, ends: list[int]) -> bool:
    """True if ``prefix`` falls exactly after a skippable frame (also a frame boundary)."""
    position = 0
    while position < prefix:
        magic = int.from_bytes(stream[position : position + 4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50:
            position += 8 + int.from_bytes(stream[position + 4 : position + 8], "little")
            if position == prefix:
                return True
        else:
            position = min(e for e in ends if e > position)
    return False
