"""The unit's seccomp sandbox is compatible with the agent: MemoryDenyWriteExecute=yes with its
native code (cffi, cryptography, PyNaCl, bcrypt, psycopg's libpq, numpy, zstandard, PyYAML's C
loader, ctypes), and SystemCallFilter=@system-service minus @privileged @resources with
SystemCallErrorNumber=EPERM, running the whole demo (sign, encrypt, apply, verify, report).

No systemd runs here as PID 1, so the tests install the same seccomp filters through
libseccomp: MemoryDenyWriteExecute= as systemd builds it (src/shared/seccomp-util.c: refuse
mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC),
and the system call allow-list expanded from `systemd-analyze syscall-filter`. Filters survive
execve, as the unit's do. Run as a script, this file is that wrapper:
``python test_systemd_sandbox.py [--syscalls FILE] CMD...``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> ctypes.CDLL:
    """libseccomp through ctypes, with the signatures of the calls used here."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise OSError("libseccomp is not installed")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ScmpArgCmp),
    ]  # fmt: skip
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def install_memory_deny_write_execute() -> None:
    """Load systemd's MemoryDenyWriteExecute= filter into this process (EPERM on violation)."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    deny = 0x00050000 | errno.EPERM  # SCMP_ACT_ERRNO(EPERM)
    rules = [
        ("mmap", 2, PROT_WRITE | PROT_EXEC),
        ("mprotect", 2, PROT_EXEC),
        ("pkey_mprotect", 2, PROT_EXEC),
        ("shmat", 2, SHM_EXEC),
    ]
    for syscall, arg, mask in rules:
        number = lib.seccomp_syscall_resolve_name(syscall.encode())
        cmp = ScmpArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask)
        if lib.seccomp_rule_add_array(ctx, deny, number, 1, ctypes.byref(cmp)) != 0:
            raise OSError(f"seccomp_rule_add({syscall}) failed")
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def install_syscall_allow_list(names: list[str]) -> None:
    """Allow only ``names``; anything else fails with EPERM (SystemCallErrorNumber=EPERM)."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(0x00050000 | errno.EPERM)
    for name in names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a system call of this architecture
            continue
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None) != 0:
            raise OSError(f"seccomp_rule_add({name}) failed")
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def syscall_groups(tool: str) -> dict[str, list[str]]:
    """systemd's system call groups as this systemd-analyze knows them."""
    output = subprocess.run([tool, "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
        elif line.startswith("#"):
            current = None  # the "unlisted" section
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(member, groups) for member in groups[name]))


UNIT = Path(__file__).resolve().parent.parent / "systemd" / "edu-agent.service"


def unit_allow_list(tool: str) -> list[str]:
    """The unit's SystemCallFilter= lines applied in order, as systemd does: the first (an
    allow-list) sets the set, later "~" lines remove from it, later plain lines add to it."""
    groups = syscall_groups(tool)
    lines = [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("SystemCallFilter=")
    ]
    assert lines and not lines[0].startswith("~"), "the unit's filter must be an allow-list"
    allowed: set[str] = set()
    for value in lines:
        names = set().union(*(expand(n, groups) for n in value.removeprefix("~").split()))
        allowed = allowed - names if value.startswith("~") else allowed | names
    return sorted(allowed)


# Exercised under the filter: every native library the agent loads, doing real work.
WORKLOAD = textwrap.dedent(
    """
    import ctypes, mmap, os
    # The filter is active: a writable+executable mapping is refused.
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("wx-mapping refused")
    else:
        raise SystemExit("filter not active: W+X mapping succeeded")

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    key = ed25519.Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"m"), b"m")
    x25519.X25519PrivateKey.generate().exchange(x25519.X25519PrivateKey.generate().public_key())
    AESGCM(AESGCM.generate_key(256)).encrypt(b"0" * 12, b"data", None)
    ChaCha20Poly1305(ChaCha20Poly1305.generate_key()).encrypt(b"0" * 12, b"data", None)
    h = hashes.Hash(hashes.SHA256()); h.update(b"x"); h.finalize()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.BestAvailableEncryption(b"pw"))  # bcrypt KDF
    serialization.load_ssh_private_key(pem, b"pw")

    import cffi
    ffi = cffi.FFI()
    ffi.cdef("size_t strlen(const char *);")
    assert ffi.dlopen(None).strlen(b"abc") == 3

    import nacl.signing, bcrypt
    nacl.signing.SigningKey.generate().sign(b"m")
    bcrypt.kdf(password=b"p", salt=b"s" * 16, desired_key_bytes=32, rounds=1)

    import paramiko
    paramiko.Ed25519Key.from_private_key_file  # noqa: B018 (import of the transport stack)
    import psycopg, pymysql, sqlalchemy, zstandard, numpy, yaml, pydantic, structlog, watchdog.observers
    sqlalchemy.create_engine("sqlite://").connect().exec_driver_sql("select 1").scalar()
    zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(b"x" * 1000))
    assert int(numpy.arange(1000, dtype=numpy.uint64).sum()) == 499500
    yaml.load("a: 1", Loader=yaml.CSafeLoader)
    psycopg.pq.version()

    # ctypes callbacks need executable trampolines (libffi closures).
    CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    libc = ctypes.CDLL(None)
    arr = (ctypes.c_int * 3)(3, 1, 2)
    libc.qsort(arr, 3, ctypes.sizeof(ctypes.c_int),
               CMP(lambda a, b: ctypes.cast(a, ctypes.POINTER(ctypes.c_int))[0]
                   - ctypes.cast(b, ctypes.POINTER(ctypes.c_int))[0]))
    assert list(arr) == [1, 2, 3]

    import agent.cli
    agent.cli.build_parser()  # imports every subcommand module the CLI has
    print("workload ok")
    """
)


def run_under_filter(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def test_agent_libraries_work_under_memory_deny_write_execute() -> None:
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed (it comes with systemd)")
    result = run_under_filter([sys.executable, "-c", WORKLOAD])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wx-mapping refused" in result.stdout
    assert "workload ok" in result.stdout


def test_the_whole_demo_runs_in_the_units_seccomp_sandbox(tmp_path: Path) -> None:
    """Both filters at once around `edu-agent demo`: hub and agent, packages signed, encrypted,
    fetched, verified, applied to SQLite and a share, receipts and heartbeats written."""
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed (it comes with systemd)")
    tool = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not os.access(tool, os.X_OK):
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    allow = tmp_path / "allow.txt"
    allow.write_text("\n".join(unit_allow_list(tool)))
    # 40,000 rows: the snapshot is large enough that its rows are checked in worker processes
    # (connectors/stores/tables/rowcheck.py), so spawning them is tested under the filters too
    result = run_under_filter(
        ["--syscalls", str(allow), sys.executable, "-m", "agent.cli", "demo", "--dir", str(tmp_path / "d"),
         "--rows", "40000"],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo succeeded" in result.stdout
    assert "workers failed" not in result.stdout + result.stderr  # the pool was not refused


def test_the_syscall_sandbox_is_real(tmp_path: Path) -> None:
    """Under the same allow-list a privileged call is refused (EPERM), not just unprivileged."""
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed (it comes with systemd)")
    tool = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    allow = tmp_path / "allow.txt"
    names = unit_allow_list(tool)
    assert "setuid" not in names and "setpriority" not in names and "openat" in names
    allow.write_text("\n".join(names))
    probe = textwrap.dedent(
        """
        import os
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 5)
        except PermissionError:
            print("refused")
        """
    )
    result = run_under_filter(["--syscalls", str(allow), sys.executable, "-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"  # allowed to an unprivileged process outside the sandbox


if __name__ == "__main__":
    args = sys.argv[1:]
    install_memory_deny_write_execute()
    if args[0] == "--syscalls":
        allow_list = Path(args[1]).read_text().split()
        args = args[2:]
        install_syscall_allow_list(allow_list)
    os.execv(args[0], args)  # noqa: S606 - the wrapped command, as systemd would


# The unit's file-system view, approximated with a mount and PID namespace: the root file
# system read-only (ProtectSystem=strict) except the agent's directory (ReadWritePaths=/
# StateDirectory=), private /tmp and /var/tmp (PrivateTmp=), and /proc with only processes,
# others' hidden (ProcSubset=pid, ProtectProc=invisible). ProtectHome= is left out: this
# test's interpreter lives under /root. A checkout under /tmp (a CI clone, say) is carried into
# the private /tmp read-only, as /opt/edu-agent stays visible to the real unit.
FILE_SYSTEM_VIEW = """
set -e
writable=$1; project=$2; shift 2
mount --bind "$writable" /mnt
case "$project" in /tmp/*|/var/tmp/*) mount --bind "$project" /mnt/.project ;; esac
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
case "$project" in /tmp/*|/var/tmp/*)
    mkdir -p "$project"
    mount --move /mnt/.project "$project"
    mount -o remount,bind,ro "$project" ;;
esac
mount -o remount,bind,ro /
mount -t proc -o subset=pid,hidepid=invisible proc /proc
if touch /etc/edu-agent-sandbox-probe 2>/dev/null; then echo "root file system is writable" >&2; exit 99; fi
test ! -e /proc/meminfo
cd /mnt
exec "$@"
"""


PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_demo_runs_in_the_units_whole_sandbox(tmp_path: Path) -> None:
    """File-system view and seccomp filters together around `edu-agent demo`: the agent writes
    nowhere but its own directories, and reads no /proc file outside its own process."""
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed (it comes with systemd)")
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) to build mount namespaces")
    probe = subprocess.run([unshare, "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are not permitted here: {probe.stderr.strip()}")
    tool = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    writable = tmp_path / "rw"
    writable.mkdir()
    (writable / ".project").mkdir()
    (writable / "allow.txt").write_text("\n".join(unit_allow_list(tool)))
    wrapped = [sys.executable, __file__, "--syscalls", "/mnt/allow.txt", sys.executable, "-m", "agent.cli",
               "demo", "--dir", "/mnt/demo", "--rows", "200"]  # fmt: skip
    result = subprocess.run(
        [unshare, "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", FILE_SYSTEM_VIEW,
         "sandbox", str(writable), PROJECT, *wrapped],
        capture_output=True, text=True, timeout=300,
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": PROJECT},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo succeeded" in result.stdout
    assert (writable / "demo" / "agent" / "state").is_dir()  # it wrote where it may
