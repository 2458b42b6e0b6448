"""Throughput of package format v1 against the bare primitives it is built from.

Writes and reads a package of ``--size-mib`` MiB of CSV-like table rows (default 1 GiB),
then runs the same primitives the format uses — zstd (same level), AES-256-GCM (same
chunk size), SHA-256 over the ciphertext — called bare on the same bytes in the same run.
The ratio format/primitives shows the format's own overhead (framing, buffering, temp file
and rename, fsync, size checks).  The last line is one JSON object.

    nice python bench/package.py --size-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
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
    TAG_BYTES,
    PackageWriter,
    chunk_ad,
    chunk_nonce,
    open_package,
    read_envelope,
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


def bare_write(plain: list[memoryview], chunk_size: int, level: int) -> tuple[Clock, int]:
    """zstd -> AES-GCM per chunk -> SHA-256 of the ciphertext, each timed on its own."""
    chunker = zstandard.ZstdCompressor(level=level).chunker(chunk_size=chunk_size)
    aead = AESGCM(os.urandom(32))
    digest = hashlib.sha256()
    out = bytearray(chunk_size + TAG_BYTES)
    package_id = "00" * 16
    clock = Clock()
    index = compressed_total = 0

    def seal(compressed: bytes, final: bool) -> None:
        nonlocal index, compressed_total
        target = memoryview(out)[: len(compressed) + TAG_BYTES]
        with clock.measure("aes-256-gcm"):
            aead.encrypt_into(chunk_nonce(index, final), compressed, chunk_ad(package_id, index), target)
        with clock.measure("sha256"):
            digest.update(target)
        index += 1
        compressed_total += len(compressed)

    for piece in plain:
        with clock.measure("zstd"):
            produced = list(chunker.compress(piece))
        for compressed in produced:
            seal(compressed, False)
    with clock.measure("zstd"):
        produced = list(chunker.finish())
    for i, compressed in enumerate(produced):
        seal(compressed, i == len(produced) - 1)
    return clock, compressed_total


def bare_read(path: Path, header: PackageHeader, data_key: bytes) -> Clock:
    """SHA-256 of the ciphertext, AES-GCM open per chunk, zstd decompress; file reads untimed."""
    with open(path, "rb") as handle:
        payload_offset = read_envelope(handle.fileno()).payload_offset
    chunks, chunk_size, package_id = header.payload.chunks, header.payload.chunk_size, header.package_id
    aead = AESGCM(data_key)
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    digest = hashlib.sha256()
    plain = bytearray(chunk_size)
    clock = Clock()
    with open(path, "rb") as handle:
        handle.seek(payload_offset)
        for index in range(chunks):
            sealed = handle.read(chunk_size + TAG_BYTES)
            with clock.measure("sha256"):
                digest.update(sealed)
            target = memoryview(plain)[: len(sealed) - TAG_BYTES]
            with clock.measure("aes-256-gcm"):
                aead.decrypt_into(
                    chunk_nonce(index, index == chunks - 1), sealed, chunk_ad(package_id, index), target
                )
            with clock.measure("zstd"):
                decompressor.decompress(target)
    return clock


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


def format_write(
    path: Path, plain: list[memoryview], parties: tuple[PartyKeys, PartyKeys], args: Any
) -> Clock:
    sender, agent = parties
    path.unlink(missing_ok=True)
    clock = Clock()
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
        with writer:
            for piece in plain:
                writer.write(piece)
    return clock


def format_read(
    path: Path, parties: tuple[PartyKeys, PartyKeys], expected: int
) -> tuple[Clock, PackageHeader]:
    sender, agent = parties
    clock = Clock()
    with clock.measure("format"):
        package = open_package(path, trusted_senders={"platform": sender.public_bundle()}, recipient=agent)
        with package:
            total = sum(len(piece) for piece in package.iter_plaintext())
    if total != expected:
        raise SystemExit(f"read {total} bytes, wrote {expected}")
    return clock, package.header


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="plaintext size (default 1024 = 1 GiB)")
    parser.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_SIZE // 1024, help="chunk size")
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level")
    parser.add_argument("--block-mib", type=int, default=16, help="distinct rows, repeated up to the size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is kept")
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
        for _ in range(args.rounds):  # interleaved, so load changes hit both sides alike
            writes.append(format_write(path, plain, parties, args))
            clock, compressed = bare_write(plain, args.chunk_kib * 1024, args.level)
            bare_writes.append(clock)
            clock, header = format_read(path, parties, total)
            reads.append(clock)
            bare_reads.append(bare_read(path, header, unwrap_data_key(header, parties[1])))
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
        f"best of {args.rounds} interleaved rounds; MB/s of plaintext"
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
