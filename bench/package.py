"""Throughput of package format v1 against the bare primitives it is built from.

Writes and reads a package of ``--size-mib`` MiB of CSV-like table rows (default 1 GiB)
and, in lockstep with it (alternating every MiB, so load on a shared machine hits both
sides alike), the same primitives the format uses — zstd (same level), AES-256-GCM (same
chunk size), the suite's digest over the ciphertext — called bare on the same bytes.  The ratio
format/primitives is the format's own overhead (framing, buffering, spool and copy,
fsync and rename, size checks, the file reads of the digest pass).  Wall and CPU time
are both reported; the last line is one JSON object.

    nice python bench/package.py --size-mib 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.header import PackageHeader
from protocol.keys import PartyKeys
from protocol.package import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL,
    DEFAULT_SUITE,
    PAYLOAD_HASHES,
    TAG_BYTES,
    PackageWriter,
    chunk_ad,
    chunk_nonce,
    open_package,
    read_envelope,
    read_header,
    unwrap_data_key,
)

MIB = 1 << 20
PIECE = MIB  # how the producer hands plaintext to the writer / primitives


def make_block(size: int, seed: int = 42) -> bytes:
    """Canonical-CSV-like rows (ids, Chinese names, phones, dates, decimals): a realistic zstd ratio.

    Fields are drawn from pools of pre-formatted values with numpy indices, so generating
    the block costs little next to what is measured.
    """
    rng = np.random.default_rng(seed)
    surnames, given = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗", "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚"
    pool = 4096
    names = [
        surnames[a] + given[b] + (given[c] if c % 2 else "")
        for a, b, c in rng.integers(0, 20, size=(pool, 3)).tolist()
    ]
    depts = ["人事处", "教务处", "科研处", "学生处", "财务处", "后勤处", "图书馆", "信息中心"]
    phones = [f"1{n:010d}" for n in rng.integers(0, 10**10, size=pool).tolist()]
    births = [
        f"{y}-{m:02d}-{d:02d}"
        for y, m, d in zip(
            rng.integers(1960, 2005, pool).tolist(),
            rng.integers(1, 13, pool).tolist(),
            rng.integers(1, 29, pool).tolist(),
            strict=True,
        )
    ]
    amounts = [f"{n / 100:.2f}" for n in rng.integers(100000, 9999999, size=pool).tolist()]
    stamps = [
        f"2026-{m % 12 + 1:02d}-{d % 28 + 1:02d} {h % 24:02d}:{mi:02d}:{sec:02d}"
        for m, d, h, mi, sec in rng.integers(0, 60, size=(pool, 5)).tolist()
    ]
    rows_needed = size // 90 + 1
    picks = rng.integers(0, pool, size=(rows_needed, 6)).tolist()
    dept_picks = rng.integers(0, len(depts), size=rows_needed).tolist()
    out = "".join(
        f'U,"{100000 + i}","{names[a]}","{depts[k]}","{phones[b]}","{births[c]}","{amounts[d]}",'
        f'"{stamps[e]}"\n'
        for i, ((a, b, c, d, e, _), k) in enumerate(zip(picks, dept_picks, strict=True))
    ).encode()
    while len(out) < size:
        out += out
    return out[:size]


def pieces(block: bytes, total: int) -> list[memoryview]:
    """The plaintext as PIECE-sized views over a repeated block (no copies)."""
    view = memoryview(block)
    out = []
    offset = 0
    while offset < total:
        start = offset % len(block)
        size = min(PIECE, total - offset, len(block) - start)
        out.append(view[start : start + size])
        offset += size
    return out


class Clock:
    """Wall and CPU seconds per label: CPU time stays meaningful on a shared, loaded machine."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def measure(self, label: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - wall
        self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - cpu

    def total(self, cpu: bool = False) -> float:
        return sum((self.cpu if cpu else self.wall).values())


class BareWriter:
    """zstd -> AES-GCM per chunk -> the default suite's digest of the ciphertext, piece by piece, timed."""

    def __init__(self, chunk_size: int, level: int) -> None:
        self.clock = Clock()
        self.compressed = 0
        self._chunker = zstandard.ZstdCompressor(level=level).chunker(chunk_size=chunk_size)
        self._aead = AESGCM(os.urandom(32))
        self._digest = PAYLOAD_HASHES[DEFAULT_SUITE]()
        self._out = bytearray(chunk_size + TAG_BYTES)
        self._index = 0

    def _seal(self, compressed: bytes, final: bool) -> None:
        target = memoryview(self._out)[: len(compressed) + TAG_BYTES]
        with self.clock.measure("aes-256-gcm"):
            nonce, ad = chunk_nonce(self._index, final), chunk_ad("00" * 16, self._index)
            self._aead.encrypt_into(nonce, compressed, ad, target)
        with self.clock.measure("digest"):
            self._digest.update(target)
        self._index += 1
        self.compressed += len(compressed)

    def feed(self, piece: memoryview) -> None:
        with self.clock.measure("zstd"):
            produced = list(self._chunker.compress(piece))
        for compressed in produced:
            self._seal(compressed, False)

    def finish(self) -> None:
        with self.clock.measure("zstd"):
            produced = list(self._chunker.finish())
        for i, compressed in enumerate(produced):
            self._seal(compressed, i == len(produced) - 1)


class BareReader:
    """The suite's digest of the ciphertext, then AES-GCM open + zstd per chunk; file reads untimed."""

    def __init__(self, path: Path, header: PackageHeader, data_key: bytes) -> None:
        self.clock = Clock()
        self.produced = 0
        self._handle = open(path, "rb")  # noqa: SIM115 -- closed by close()
        self._offset = read_envelope(self._handle.fileno()).payload_offset
        self._header = header
        self._aead = AESGCM(data_key)
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._plain = bytearray(header.payload.chunk_size)
        self._index = 0

    @property
    def done(self) -> bool:
        return self._index >= self._header.payload.chunks

    def hash_all(self) -> None:
        digest = PAYLOAD_HASHES[self._header.suite]()
        self._handle.seek(self._offset)
        while block := self._handle.read(4 * MIB):
            with self.clock.measure("digest"):
                digest.update(block)
        self._handle.seek(self._offset)

    def step(self) -> None:
        info = self._header.payload
        sealed = self._handle.read(info.chunk_size + TAG_BYTES)
        target = memoryview(self._plain)[: len(sealed) - TAG_BYTES]
        with self.clock.measure("aes-256-gcm"):
            nonce = chunk_nonce(self._index, self._index == info.chunks - 1)
            self._aead.decrypt_into(nonce, sealed, chunk_ad(self._header.package_id, self._index), target)
        with self.clock.measure("zstd"):
            self.produced += len(self._decompressor.decompress(target))
        self._index += 1

    def close(self) -> None:
        self._handle.close()


def write_round(
    path: Path, plain: list[memoryview], parties: tuple[PartyKeys, PartyKeys], args: Any
) -> tuple[Clock, BareWriter]:
    """The format's writer and the bare primitives in lockstep, piece by piece.

    Alternating every MiB makes load changes on a shared machine hit both sides alike.
    """
    sender, agent = parties
    path.unlink(missing_ok=True)
    clock, bare = Clock(), BareWriter(args.chunk_kib * 1024, args.level)
    with clock.measure("format"):
        writer = PackageWriter(
            path,
            kind="snapshot",
            sender=sender,
            recipient=agent.public_bundle(),
            subscription="bench",
            sequence=1,
            chunk_size=args.chunk_kib * 1024,
            level=args.level,
        )
    for piece in plain:
        with clock.measure("format"):
            writer.write(piece)
        bare.feed(piece)
    with clock.measure("format"):
        writer.close()
    bare.finish()
    return clock, bare


def read_round(path: Path, parties: tuple[PartyKeys, PartyKeys], expected: int) -> tuple[Clock, BareReader]:
    """The format's reader and the bare primitives in lockstep, chunk by chunk."""
    sender, agent = parties
    trusted = {"platform": sender.public_bundle()}
    header = read_header(path, trusted_senders=trusted)  # untimed set-up of the bare side
    bare = BareReader(path, header, unwrap_data_key(header, agent))
    clock = Clock()
    with clock.measure("format"):
        package = open_package(path, trusted_senders=trusted, recipient=agent)  # includes the digest pass
        pieces_out = package.iter_plaintext()
    bare.hash_all()
    produced = 0
    while True:
        with clock.measure("format"):
            piece = next(pieces_out, None)
        if piece is None:
            break
        produced += len(piece)
        while bare.produced < produced and not bare.done:
            bare.step()
    while not bare.done:
        bare.step()
    with clock.measure("format"):
        package.close()
    bare.close()
    if produced != expected or bare.produced != expected:
        raise SystemExit(f"read {produced} (bare {bare.produced}) bytes, wrote {expected}")
    return clock, bare


def reset_peak_rss() -> None:
    """Reset VmHWM (Linux >= 4.0); elsewhere the peak includes data generation."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="plaintext size (default 1024 = 1 GiB)")
    parser.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_SIZE // 1024, help="chunk size")
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level")
    parser.add_argument("--block-mib", type=int, default=16, help="distinct rows, repeated up to the size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each side is kept")
    parser.add_argument("--dir", help="where to write the package (default: a temp dir)")
    args = parser.parse_args()
    total = args.size_mib * MIB
    block = make_block(min(args.block_mib * MIB, total))
    plain = pieces(block, total)
    reset_peak_rss()  # measure the package work, not the generation of the test data
    parties = (PartyKeys.generate("platform"), PartyKeys.generate("school-1"))
    mb = total / 1e6

    writes: list[Clock] = []
    reads: list[Clock] = []
    bare_writes: list[Clock] = []
    bare_reads: list[Clock] = []
    compressed = 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.pkg"
        for _ in range(args.rounds):
            clock, bare_writer = write_round(path, plain, parties, args)
            writes.append(clock)
            bare_writes.append(bare_writer.clock)
            compressed = bare_writer.compressed
            clock, bare_reader = read_round(path, parties, total)
            reads.append(clock)
            bare_reads.append(bare_reader.clock)
        file_size = path.stat().st_size

    def best(clocks: list[Clock], cpu: bool = False) -> Clock:
        return min(clocks, key=lambda c: c.total(cpu))

    fw, fr, bw, br = best(writes), best(reads), best(bare_writes), best(bare_reads)
    write_ratio, read_ratio = bw.total() / fw.total(), br.total() / fr.total()
    cpu_write_ratio = best(bare_writes, True).total(True) / best(writes, True).total(True)
    cpu_read_ratio = best(bare_reads, True).total(True) / best(reads, True).total(True)
    peak = peak_rss_mb()

    def detail(clock: Clock) -> str:
        return ", ".join(f"{label} {mb / seconds:.0f}" for label, seconds in clock.wall.items())

    print(
        f"payload: {args.size_mib} MiB CSV-like plaintext -> {file_size / 1e6:.1f} MB package "
        f"(zstd level {args.level}, ratio {total / compressed:.2f}), chunks of {args.chunk_kib} KiB, "
        f"format and primitives in lockstep, best of {args.rounds} rounds; MB/s of plaintext"
    )
    print(
        f"write: format {mb / fw.total():7.1f} MB/s | bare primitives {mb / bw.total():7.1f} MB/s "
        f"({detail(bw)}) | ratio {write_ratio:.2f} (CPU time: {cpu_write_ratio:.2f})"
    )
    print(
        f"read:  format {mb / fr.total():7.1f} MB/s | bare primitives {mb / br.total():7.1f} MB/s "
        f"({detail(br)}) | ratio {read_ratio:.2f} (CPU time: {cpu_read_ratio:.2f})"
    )
    print(
        f"peak RSS {peak:.0f} MB during the measurements (holding the {len(block) / 1e6:.0f} MB data block)"
    )
    result = {
        "bench": "protocol.package",
        "size_mib": args.size_mib,
        "write_mb_s": round(mb / fw.total(), 1),
        "baseline_write_mb_s": round(mb / bw.total(), 1),
        "write_ratio": round(write_ratio, 3),
        "read_mb_s": round(mb / fr.total(), 1),
        "baseline_read_mb_s": round(mb / br.total(), 1),
        "read_ratio": round(read_ratio, 3),
        "ratio": round(min(write_ratio, read_ratio), 3),
        "cpu_write_ratio": round(cpu_write_ratio, 3),
        "cpu_read_ratio": round(cpu_read_ratio, 3),
        "compression_ratio": round(total / compressed, 2),
        "peak_rss_mb": round(peak, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
