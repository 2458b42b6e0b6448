"""SFTP download throughput: the agent's transport vs OpenSSH's ``sftp`` client, same file, same
sshd (the documented chrooted configuration, tests/sshd.py), same run.

    nice .venv/bin/python bench/transport.py [--size-mib 256] [--repeat 3]

Runs rotate between the clients (so background load hits all alike); each run opens its own
connection (handshake included) and writes to local disk; the median run of each counts. The
baseline is ``sftp`` with its default cipher; it is also run forced onto the cipher our
transport negotiates (``aes128-gcm``), to separate client cost from cipher cost.
Target: ratio >= 0.6. Ends with one JSON line. Needs root (chroot, a system user for the agent).
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.transports import RetryPolicy, SftpSettings, SftpTransport
from connectors.transports.sftp import MAX_REQUEST_SIZE
from tests.sshd import Account, SshdServer, make_chroot_safe_dir, remove_stale

MIB = 1024 * 1024


def write_package(path: Path, size_mib: int) -> str:
    """An incompressible file of ``size_mib`` MiB (like an encrypted package); returns its sha256."""
    digest = hashlib.sha256()
    seed = os.urandom(MIB)
    with path.open("wb") as fh:
        for i in range(size_mib):
            block = hashlib.sha256(i.to_bytes(8, "big")).digest() + seed[32:]
            fh.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu_seconds: float  # the client's own CPU (ours: this process, all threads; sftp: it and ssh)
    cipher: str


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ours(server: SshdServer, account: Account, dest: Path, request_size: int, depth: int) -> Run:
    settings = SftpSettings(
        host="127.0.0.1",
        port=server.port,
        username=account.user,
        identity_file=account.key_path,
        host_key=server.host_key_line,
        retry=RetryPolicy(attempts=1),
        request_size=request_size,
        prefetch_requests=depth,
    )
    started, cpu = time.perf_counter(), time.process_time()
    with SftpTransport(settings) as transport:
        transport.fetch("inbox/package.bin", dest)
        cipher = transport._ssh.remote_cipher if transport._ssh else "?"
    return Run(time.perf_counter() - started, time.process_time() - cpu, cipher)


def openssh(
    server: SshdServer, account: Account, dest: Path, workdir: Path, cipher: str | None = None
) -> Run:
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(server.known_hosts_line() + "\n")
    batch = workdir / "batch"
    batch.write_text(f"get /inbox/package.bin {dest}\n")
    command = [
        "sftp", "-v", "-b", str(batch), "-P", str(server.port), "-i", str(account.key_path),
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        *(["-c", cipher] if cipher else []), f"{account.user}@127.0.0.1",
    ]  # fmt: skip
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds, cpu_seconds = time.perf_counter() - started, _children_cpu() - cpu
    # "debug1: kex: server->client cipher: chacha20-poly1305@openssh.com MAC: <implicit> ..."
    ciphers = [
        line.split("cipher:")[1].split()[0] for line in done.stderr.splitlines() if "server->client" in line
    ]
    return Run(seconds, cpu_seconds, ciphers[0] if ciphers else "?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="package size (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client (default 3)")
    parser.add_argument("--request-kib", type=int, default=MAX_REQUEST_SIZE // 1024, help="READ size")
    parser.add_argument("--depth", type=int, default=SftpSettings.prefetch_requests, help="READs in flight")
    args = parser.parse_args()

    remove_stale()
    base = make_chroot_safe_dir()
    server = SshdServer(base / "sshd")
    try:
        account = server.add_account("bench")
        server.start()
        expected = write_package(account.path("inbox", "package.bin"), args.size_mib)
        dest_dir = base / "downloads"
        dest_dir.mkdir()
        clients: dict[str, Callable[[Path], Run]] = {
            "ours": lambda dest: ours(server, account, dest, args.request_kib * 1024, args.depth),
            "openssh": lambda dest: openssh(server, account, dest, base),
            # The same client forced onto our cipher: separates cipher cost from client cost.
            "openssh-gcm": lambda dest: openssh(server, account, dest, base, "aes128-gcm@openssh.com"),
        }
        runs: dict[str, list[Run]] = {name: [] for name in clients}
        for n in range(args.repeat):
            order = list(clients)
            for name in order[n % len(order) :] + order[: n % len(order)]:  # rotate who goes first
                dest = dest_dir / f"{name}.bin"
                dest.unlink(missing_ok=True)
                run = clients[name](dest)
                if sha256(dest) != expected:
                    raise SystemExit(f"{name}: downloaded file differs from the package")
                dest.unlink()
                runs[name].append(run)
                print(
                    f"run {n + 1} {name:12s} {args.size_mib / run.seconds:8.1f} MiB/s  "
                    f"client CPU {run.cpu_seconds:6.2f} s",
                    flush=True,
                )
        rate = {name: args.size_mib / statistics.median(r.seconds for r in rs) for name, rs in runs.items()}
        cpu = {name: statistics.median(r.cpu_seconds for r in rs) for name, rs in runs.items()}
        cipher = {name: rs[-1].cipher for name, rs in runs.items()}
        ratio = rate["ours"] / rate["openssh"]
        for name, label in (
            ("ours", "edu-agent SFTP transport"),
            ("openssh", "OpenSSH sftp client"),
            ("openssh-gcm", "OpenSSH sftp client"),
        ):
            print(f"{label} ({cipher[name]}): {rate[name]:.1f} MiB/s, client CPU {cpu[name]:.2f} s")
        print(f"ratio {ratio:.2f} (target >= 0.6); medians of {args.repeat} runs each")
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "bench": "transport.sftp_download",
                    "size_mib": args.size_mib,
                    "mib_per_s": round(rate["ours"], 1),
                    "baseline_mib_per_s": round(rate["openssh"], 1),
                    "ratio": round(ratio, 3),
                    "baseline_same_cipher_mib_per_s": round(rate["openssh-gcm"], 1),
                    "ratio_same_cipher": round(rate["ours"] / rate["openssh-gcm"], 3),
                    "client_cpu_s": round(cpu["ours"], 2),
                    "baseline_client_cpu_s": round(cpu["openssh"], 2),
                    "peak_rss_mb": round(peak_rss_mb, 1),
                    "cipher": cipher["ours"],
                    "baseline_cipher": cipher["openssh"],
                }
            )
        )
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
