"""MemoryDenyWriteExecute=yes is compatible with the agent's native code (cffi, cryptography,
PyNaCl, bcrypt, psycopg's libpq, numpy, zstandard, PyYAML's C loader, ctypes).

No systemd runs here as PID 1, so the test installs the same seccomp filter systemd installs
for MemoryDenyWriteExecute= (src/shared/seccomp-util.c: refuse mmap with PROT_WRITE|PROT_EXEC,
mprotect/pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC) through libseccomp, then execs a
Python that imports and exercises those libraries. The filter survives execve, like the
unit's. Run as a script, this file is that wrapper: ``python test_systemd_mdwe.py CMD...``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
import textwrap

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


def install_memory_deny_write_execute() -> None:
    """Load systemd's MemoryDenyWriteExecute= filter into this process (EPERM on violation)."""
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


def test_edu_agent_cli_runs_under_memory_deny_write_execute() -> None:
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed (it comes with systemd)")
    result = run_under_filter([sys.executable, "-m", "agent.cli", "--help"])
    assert result.returncode == 0, result.stderr
    assert "edu-agent" in result.stdout


if __name__ == "__main__":
    install_memory_deny_write_execute()
    os.execv(sys.argv[1], sys.argv[1:])  # noqa: S606 - the wrapped command, as systemd would
