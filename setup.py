"""The one compiled part: protocol._native, the per-row work of checks and digests (protocol/csrc/).

Everything else is declared in pyproject.toml. BLAKE3's C sources are vendored in
protocol/csrc/blake3 (CC0-1.0 or Apache-2.0, version 1.3.3 as shipped in blake3-py 1.0.11's
c_impl); its x86-64 assembly is handed to gcc as extra objects (gcc assembles .S files when
linking), NEON intrinsics on aarch64, portable C elsewhere. BLAKE3 picks the widest
instruction set the CPU has at run time.
"""

from __future__ import annotations

import platform
import sys

from setuptools import Extension, setup

BLAKE3 = "protocol/csrc/blake3"


def lthash_extension() -> Extension:
    # blake3.c is #included by native.c (its XOF is widened there, protocol/csrc/xof.h)
    sources = ["protocol/csrc/native.c", "protocol/csrc/sqlite_rows.c"] + [
        f"{BLAKE3}/{name}" for name in ("blake3_dispatch.c", "blake3_portable.c")
    ]
    machine = platform.machine().lower()
    extra_objects: list[str] = []
    macros: list[tuple[str, str | None]] = []
    if machine in ("x86_64", "amd64") and sys.maxsize > 2**32 and sys.platform != "win32":
        extra_objects = [
            f"{BLAKE3}/blake3_{isa}_x86-64_unix.S" for isa in ("sse2", "sse41", "avx2", "avx512")
        ]
    elif machine in ("aarch64", "arm64"):
        sources.append(f"{BLAKE3}/blake3_neon.c")
        macros.append(("BLAKE3_USE_NEON", "1"))
    else:
        macros += [(f"BLAKE3_NO_{isa}", None) for isa in ("SSE2", "SSE41", "AVX2", "AVX512")]
    return Extension(
        "protocol._native",
        sources=sources,
        include_dirs=[BLAKE3, "protocol/csrc/sqlite"],
        define_macros=macros,
        extra_objects=extra_objects,
        extra_compile_args=["-O3"] if sys.platform != "win32" else [],
    )


setup(ext_modules=[lthash_extension()])
