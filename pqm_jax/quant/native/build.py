"""Compiles a native kernel once per machine and loads it, through a cache shared by processes.

The library is keyed on everything that changes its code: the source and the headers beside it
(`kernels.h`), the compiler and its flags, the jax/jaxlib versions (the FFI headers) and the CPU's
feature flags (`-march=native`), so a copied cache on another machine rebuilds instead of crashing
on an illegal instruction. Builds write a temporary file and `os.replace` it into place, so
processes racing on one cache see either no library or a whole one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

FLAGS = (
    "-O3",
    "-march=native",
    "-shared",
    "-fPIC",
    "-std=c++17",
    "-ffp-contract=off",  # a contracted multiply-add would round differently from XLA
    "-pthread",
)
BUILD_TIMEOUT_S = 300


def cache_dir() -> pathlib.Path:
    """`$PQM_CACHE_DIR`, else `~/.cache/pqm_jax/native`."""
    env = os.environ.get("PQM_CACHE_DIR")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "pqm_jax" / "native"


def compiler() -> str:
    """`$PQM_CXX`, else the first of `c++`, `g++`, `clang++` on PATH (else plain "c++", which
    then fails to run and sends callers to their fallback)."""
    env = os.environ.get("PQM_CXX")
    if env:
        return env
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), "c++")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def library_path(
    source: pathlib.Path, *, cxx: str, cache: pathlib.Path, flags: tuple[str, ...] = FLAGS
) -> pathlib.Path:
    """Where the library built from `source` by `cxx` with `flags` lives in `cache`."""
    h = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # what the kernels include from their folder
        h.update(b"\0" + header.read_bytes())
    for part in (cxx, *flags, jax.__version__, jaxlib.__version__, _cpu_flags()):
        h.update(b"\0" + part.encode())
    return cache / f"{source.stem}-{h.hexdigest()[:16]}.so"


def build(
    source: pathlib.Path, *, cxx: str, cache: pathlib.Path, flags: tuple[str, ...] = FLAGS
) -> pathlib.Path:
    """Compiles `source` unless the cache already holds it; returns the library's path.

    Raises:
      OSError: the compiler is missing or the cache is not writable.
      subprocess.CalledProcessError / TimeoutExpired: the compiler failed.
    """
    target = library_path(source, cxx=cxx, cache=cache, flags=flags)
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{target.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", str(source), "-o", tmp]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(
    source: pathlib.Path, *, cxx: str, cache: pathlib.Path, flags: tuple[str, ...] = FLAGS
) -> ctypes.CDLL:
    """Builds (if needed) and loads `source`. A cached file that does not load (truncated,
    foreign) is rebuilt once; errors of the rebuild propagate as in `build`."""
    path = build(source, cxx=cxx, cache=cache, flags=flags)
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return ctypes.CDLL(str(build(source, cxx=cxx, cache=cache, flags=flags)))
