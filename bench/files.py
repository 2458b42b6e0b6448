"""Applying files packages end to end, against ``cp -r`` + ``sync`` of the same plaintext.

Two cases, each ``--total-mib`` MiB (default 1024): many small files (100 KiB each, so
10 240 files at full size) and one large file. For each, the hub side (not timed)
writes a signed, encrypted ``files`` package from a source tree; then, timed:

* ours: a fresh process opens the package (signature, payload digest), stream-decrypts,
  decompresses and applies it into a share directory with ``ShareStore.apply``
  (staging, SHA-256 per file, syncfs, renames, state commit);
* baseline: ``cp -r`` of the same plaintext tree followed by ``sync`` (both make the
  data durable), in the same run.

``--repeat N`` (default 5) runs both sides N times, alternating (and alternating which goes
first), each into a fresh directory kept until the case ends; every pair is printed with
the load average before it, then the medians and the worst and best pair's ratio. Peak
RSS of the applying process is read with ``wait4``. The last line is one JSON object
(``ratio``: the ratio of the medians, the worse of the two cases; ``ratio_min``: the worst
single pair).

    nice python bench/files.py --total-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.stores.shares.fileset import fileset_summary
from connectors.stores.shares.manifest import ManifestEntry, build_manifest
from connectors.stores.shares.store import ShareStore
from protocol.keys import PartyKeys, init_keys
from protocol.package import DEFAULT_SUITE, SUPPORTED_SUITES, PackageWriter, open_package

SMALL_FILE = 100 * 1024
BLOCK = 1 << 20


def make_source(root: Path, total: int, file_size: int) -> list[ManifestEntry]:
    """Incompressible files (like the PDFs and archives of a real share), hashed as the hub would."""
    entries = []
    count = max(1, total // file_size)
    for i in range(count):
        rel = f"d{i // 1000:03d}/f{i:05d}.bin" if count > 1 else "big.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as fh:
            remaining = file_size
            while remaining:
                block = os.urandom(min(BLOCK, remaining))
                fh.write(block)
                digest.update(block)
                remaining -= len(block)
        entries.append(ManifestEntry(rel, file_size, digest.hexdigest()))
    return entries


def write_package(
    root: Path, entries: list[ManifestEntry], out: Path, hub: PartyKeys, agent: PartyKeys, suite: str
) -> Path:
    manifest = build_manifest(entries)
    with PackageWriter(
        out,
        kind="files",
        sender=hub,
        recipient=agent.public_bundle(),
        subscription="bench-files",
        sequence=1,
        builds_on=0,
        catalog={"resource_name": "基准-文件", "security_level": "内部"},
        counts={"files": len(manifest.entries)},
        expected_state=fileset_summary(entries),
        manifest=manifest.to_json(),
        suite=suite,
    ) as writer:
        for entry in manifest.entries:
            with open(root / entry.path, "rb") as fh:
                while block := fh.read(BLOCK):
                    writer.write(block)
    return out


def apply_child(package: str, share: str, keys_dir: str) -> None:
    """Runs in a fresh process: open, verify, decrypt and apply; print elapsed seconds.

    With ``share`` = "-" it only reads the package (verify + decrypt + decompress), to show
    how much of the time is the package format's and how much the store's.
    """
    from protocol.keys import load_bundle, load_keys

    agent = load_keys(Path(keys_dir) / "agent")
    hub = load_bundle(Path(keys_dir) / "hub.json")
    started = time.perf_counter()
    with open_package(package, trusted_senders={hub.party_id: hub}, recipient=agent) as pkg:
        if share == "-":
            for _ in pkg.iter_plaintext(BLOCK):
                pass
        else:
            result = ShareStore(share).apply(pkg.header, pkg.plaintext(), "bench")
            assert result.match, result
    print(json.dumps({"elapsed": time.perf_counter() - started}))


def stages_child(package: str, scratch: str, keys_dir: str) -> None:
    """Time each stage of applying one package on its own, in MB/s of plaintext (or ciphertext).

    Same process shape as ``apply_child``: read+digest is ``open_package`` (signature and the
    suite's digest pass over the ciphertext); decrypt is AES-GCM over every chunk (no decompression);
    decrypt+decompress is the whole plaintext stream; sha256, write (into the page cache) and
    fsync run over the same number of bytes from one reused buffer; write_dropped_fsync writes
    them as the store does (writeback started every ``WRITEBACK_STEP``, dropped from the page
    cache behind the writer by ``fsops.Flusher``) up to a final fsync.
    """
    from connectors.stores.shares import fsops
    from connectors.stores.shares.store import WRITEBACK_STEP
    from protocol.keys import load_bundle, load_keys
    from protocol.package import _ChunkSource

    agent = load_keys(Path(keys_dir) / "agent")
    hub = load_bundle(Path(keys_dir) / "hub.json")
    times: dict[str, float] = {}
    started = time.perf_counter()
    with open_package(package, trusted_senders={hub.party_id: hub}, recipient=agent) as pkg:
        times["read_digest"] = time.perf_counter() - started
        cipher_mb = pkg.header.payload.ciphertext_bytes / 1e6
        plain_mb = pkg.header.plaintext_bytes / 1e6
        source = _ChunkSource(pkg._handle.fileno(), pkg._envelope, pkg.header, pkg._data_key)
        started = time.perf_counter()
        while source.read():
            pass
        times["decrypt"] = time.perf_counter() - started
        buffer = bytearray(BLOCK)
        started = time.perf_counter()
        with pkg.plaintext() as stream:
            while stream.readinto(buffer):
                pass
        times["decrypt_decompress"] = time.perf_counter() - started
    view = memoryview(buffer)
    blocks = int(plain_mb * 1e6) // BLOCK
    started = time.perf_counter()
    digest = hashlib.sha256()
    for _ in range(blocks):
        digest.update(view)
    times["sha256"] = time.perf_counter() - started
    fd = os.open(Path(scratch) / "stage-dropped.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    started = time.perf_counter()
    with fsops.Flusher() as flusher:
        flushed = 0
        for i in range(1, blocks + 1):
            os.write(fd, view)
            if i * BLOCK - flushed >= WRITEBACK_STEP:
                flusher.start(fd, flushed, i * BLOCK - flushed)
                flushed = i * BLOCK
        os.fsync(fd)
        flusher.done(fd)
    times["write_dropped_fsync"] = time.perf_counter() - started
    os.unlink(Path(scratch) / "stage-dropped.bin")
    fd = os.open(Path(scratch) / "stage-write.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(blocks):
            os.write(fd, view)
        times["write"] = time.perf_counter() - started
        started = time.perf_counter()
        os.fsync(fd)
        times["fsync"] = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(Path(scratch) / "stage-write.bin")
    mb = {"read_digest": cipher_mb, "decrypt": cipher_mb}
    print(json.dumps({k: round(mb.get(k, plain_mb) / v, 1) for k, v in times.items()}))


def run_stages(package: Path, scratch: Path, keys_dir: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--stages-child", str(package), str(scratch), str(keys_dir)],
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    stages: dict[str, float] = json.loads(out)
    return stages


def _wait(proc: subprocess.Popen[bytes], what: str) -> resource.struct_rusage:
    """Reap ``proc`` and return its resource usage (CPU time, peak RSS)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed with {proc.returncode}")
    return usage


def run_ours(package: Path, share: Path | str, keys_dir: Path) -> tuple[float, float, float]:
    """Seconds, peak RSS in MB and CPU seconds (user + system) of one apply."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--apply-child", str(package), str(share), str(keys_dir)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    usage = _wait(proc, "apply child")
    return json.loads(out)["elapsed"], usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def run_baseline(src: Path, dst: Path) -> tuple[float, float]:
    """Seconds of ``cp -r`` + ``sync``, and the CPU seconds of ``cp``.

    ``cp``'s CPU time is nearly all the kernel's page-cache work; it shows which runs found
    recently freed pages to reuse (see docs/shares.md, "Benchmark").
    """
    started = time.perf_counter()
    usage = _wait(subprocess.Popen(["cp", "-r", str(src), str(dst)]), "cp -r")
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


def bench_case(
    name: str,
    work: Path,
    total: int,
    file_size: int,
    keys_dir: Path,
    hub: PartyKeys,
    agent: PartyKeys,
    repeat: int,
    suite: str,
) -> dict[str, Any]:
    case = work / name
    src = case / "src"
    src.mkdir(parents=True)
    entries = make_source(src, total, file_size)
    package = write_package(src, entries, case / "package.edupkg", hub, agent, suite)
    subprocess.run(["sync"], check=True)
    size_mb = sum(e.size for e in entries) / 1e6
    read_only, _, _ = run_ours(package, "-", keys_dir)  # also brings both sides into the page cache
    pairs: list[dict[str, float]] = []
    rss = 0.0
    # Each run writes into a fresh directory, and every run's output is kept until the case is
    # over: ext4 skips recently deleted inodes when it allocates new ones (``recently_deleted``,
    # for a minute or more), so creating 10 000 files just after deleting 10 000 costs several
    # times more per file, and whichever side ran after the other's cleanup paid for it.
    for i in range(repeat):  # alternating, and alternating who goes first, under the same load
        pair: dict[str, float] = {"load_1m": load_1m()}
        for side in ("baseline", "ours") if i % 2 == 0 else ("ours", "baseline"):
            if side == "baseline":
                pair["baseline_s"], pair["baseline_cpu_s"] = run_baseline(src, case / f"cp-{i}")
            else:
                (case / f"share-{i}").mkdir()
                pair["ours_s"], peak, pair["ours_cpu_s"] = run_ours(package, case / f"share-{i}", keys_dir)
                rss = max(rss, peak)
            subprocess.run(["sync"], check=True)
        pair["ratio"] = pair["baseline_s"] / pair["ours_s"]
        pairs.append(pair)
        print(
            f"{name} run {i + 1}/{repeat} (load {pair['load_1m']}): ours {pair['ours_s']:.2f} s "
            f"(CPU {pair['ours_cpu_s']:.2f} s), cp -r + sync {pair['baseline_s']:.2f} s "
            f"(cp CPU {pair['baseline_cpu_s']:.2f} s), ratio {pair['ratio']:.3f}",
            flush=True,
        )
    baseline = statistics.median(p["baseline_s"] for p in pairs)
    ours = statistics.median(p["ours_s"] for p in pairs)
    ratios = [p["ratio"] for p in pairs]
    stages = run_stages(package, case, keys_dir) if file_size == total else None
    result: dict[str, Any] = {
        "files": len(entries),
        "mb": round(size_mb, 1),
        "mb_s": round(size_mb / ours, 1),
        "baseline_mb_s": round(size_mb / baseline, 1),
        "ratio": round(baseline / ours, 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "runs": [
            {
                "ours_s": round(p["ours_s"], 3),
                "baseline_s": round(p["baseline_s"], 3),
                "ours_cpu_s": round(p["ours_cpu_s"], 3),
                "baseline_cpu_s": round(p["baseline_cpu_s"], 3),
                "ratio": round(p["ratio"], 3),
                "load_1m": p["load_1m"],
            }
            for p in pairs
        ],
        "peak_rss_mb": round(rss, 1),
        "package_read_mb_s": round(size_mb / read_only, 1),
    }
    if stages is not None:
        result["stages_mb_s"] = stages
    print(
        f"{name}: {len(entries)} files, {size_mb:.0f} MB, medians of {repeat}: ours {result['mb_s']} MB/s "
        f"({ours:.2f} s), cp -r + sync {result['baseline_mb_s']} MB/s ({baseline:.2f} s), "
        f"ratio {result['ratio']} (runs {result['ratio_min']}..{result['ratio_max']}), "
        f"peak RSS {result['peak_rss_mb']} MB; "
        f"reading the package alone (verify, decrypt, decompress): {result['package_read_mb_s']} MB/s",
        flush=True,
    )
    if stages is not None:
        print(
            f"{name}: each stage alone, MB/s: " + ", ".join(f"{k} {v}" for k, v in stages.items()), flush=True
        )
    shutil.rmtree(case)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024, help="MiB per case (default 1024)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of each side, alternating; each run and the medians reported (default 5)",
    )
    parser.add_argument(
        "--case",
        choices=("both", "small_files", "one_file"),
        default="both",
        help="run one case only, for quick iterations (the JSON line is then that case's result)",
    )
    parser.add_argument(
        "--suite",
        choices=sorted(SUPPORTED_SUITES),
        default=DEFAULT_SUITE,
        help="the packages' crypto suite (default: the writers'; the suites differ in the payload digest)",
    )
    parser.add_argument(
        "--apply-child", nargs=3, metavar=("PACKAGE", "SHARE", "KEYS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--stages-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.apply_child:
        apply_child(*args.apply_child)
        return
    if args.stages_child:
        stages_child(*args.stages_child)
        return
    total = args.total_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-files-", dir=args.dir) as tmp:
        work = Path(tmp)
        need = (2 * args.repeat + 2) * total + (256 << 20)
        if shutil.disk_usage(work).free < need:
            raise SystemExit(
                f"{work}: {need >> 20} MiB free needed (each run's output is kept until its case ends)"
            )
        load_start = load_1m()
        keys_dir = work / "keys"
        keys_dir.mkdir()
        hub = PartyKeys.generate("hub")
        agent = init_keys(keys_dir / "agent", "agent")
        (keys_dir / "hub.json").write_text(hub.public_bundle().to_json())
        if args.case != "both":
            size = total if args.case == "one_file" else min(SMALL_FILE, total)
            result = bench_case(args.case, work, total, size, keys_dir, hub, agent, args.repeat, args.suite)
            print(
                json.dumps(
                    {
                        "bench": f"shares.files.{args.case}",
                        "total_mib": args.total_mib,
                        "suite": args.suite,
                        **result,
                    }
                )
            )
            return
        small = bench_case(
            "small_files", work, total, min(SMALL_FILE, total), keys_dir, hub, agent, args.repeat, args.suite
        )
        big = bench_case("one_file", work, total, total, keys_dir, hub, agent, args.repeat, args.suite)
    print(
        json.dumps(
            {
                "bench": "shares.files",
                "total_mib": args.total_mib,
                "suite": args.suite,
                "small_files": small["files"],
                "small_mb_s": small["mb_s"],
                "small_baseline_mb_s": small["baseline_mb_s"],
                "small_ratio": small["ratio"],
                "small_ratio_min": small["ratio_min"],
                "big_mb_s": big["mb_s"],
                "big_baseline_mb_s": big["baseline_mb_s"],
                "big_ratio": big["ratio"],
                "big_ratio_min": big["ratio_min"],
                "ratio": min(small["ratio"], big["ratio"]),
                "ratio_min": min(small["ratio_min"], big["ratio_min"]),
                "peak_rss_mb": big["peak_rss_mb"],
                "small_peak_rss_mb": small["peak_rss_mb"],
                "small_package_read_mb_s": small["package_read_mb_s"],
                "big_package_read_mb_s": big["package_read_mb_s"],
                "big_stages_mb_s": big["stages_mb_s"],
                "repeat": args.repeat,
                "small_runs": small["runs"],
                "big_runs": big["runs"],
                "load_1m_start": load_start,
                "load_1m_end": load_1m(),
            }
        )
    )


if __name__ == "__main__":
    main()
