"""Native CPU kernel for block-wise 4-bit (NF4/FP4) dequantisation, as an XLA FFI call.

Why: XLA's CPU backend turns the 16-entry code lookup into one scalar gather per element, slower
than bitsandbytes; `nf4_cpu.cc` does 16 lookups per AVX-512 permute. The kernel is compiled on
first use (see `build`) and registered with XLA once per process. Without a compiler, when the
build fails, or with `PQM_NATIVE=0`, `available()` is False (logged once) and `decode` lowers the
caller's XLA formulation instead. Results are bit-identical either way.

The kernel is used in processes with one device (`PQM_NATIVE=1` forces it with several; see
`_one_device`). Inside a jitted function `decode` lowers it only for CPU (`lax.platform_dependent`); GPU
and TPU get the XLA path, and a host whose default backend is not the CPU never builds the
kernel. Under `vmap` the kernel runs once per batch element (the quantised base is normally
unbatched); its derivative in `absmax` is the XLA path's (the decode is linear in it). Inputs
split over an Explicit mesh axis stay on the XLA path, which keeps the split.

`matvec` (imported on its own) holds a second kernel, 4-bit weights times a few rows decoded on
the fly, built, cached and registered by the same machinery (`load_target`).
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import subprocess
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax.quant.native import build

TARGET = "pqm_four_bit_decode"
SOURCE = pathlib.Path(__file__).with_name("nf4_cpu.cc")

_log = logging.getLogger(__name__)
_loaded = []  # the ctypes libraries whose handlers XLA holds: never unloaded

XlaDecode = Callable[[jax.Array, jax.Array], jax.Array]


@functools.cache
def available() -> bool:
    """True once the kernel is built, loaded and registered; the first call does the work."""
    return load_target(SOURCE, "PqmFourBitDecode", TARGET, "4-bit decode")


def load_target(source: pathlib.Path, symbol: str, target: str, what: str) -> bool:
    """Builds and loads `source` (through the shared cache) and registers its FFI handler
    `symbol` as the CPU target `target`. False, said in one log line naming `what`, when
    `PQM_NATIVE=0` or the build or load fails: callers then lower their XLA formulation."""
    if os.environ.get("PQM_NATIVE", "1") == "0":
        _log.info("PQM_NATIVE=0: the %s uses the XLA path", what)
        return False
    try:
        lib = build.load(source, cxx=build.compiler(), cache=build.cache_dir())
        capsule = jax.ffi.pycapsule(getattr(lib, symbol))
        jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except (OSError, AttributeError, RuntimeError, subprocess.SubprocessError) as e:
        # One line: the compiler's last word if it spoke, else the exception.
        said = (getattr(e, "stderr", None) or "").strip().splitlines()
        _log.warning("native %s unavailable, using the XLA path: %s", what, said[-1] if said else e)
        return False
    _loaded.append(lib)
    return True


def decode(
    codes: jax.Array,
    absmax: jax.Array,
    *,
    table: np.ndarray,
    block: int,
    xla: XlaDecode,
    threads: int = 0,
) -> jax.Array:
    """Decoded whole blocks, flat float32 [n_blocks * block].

    Args:
      codes: uint8 [n_blocks * block / 2], two codes a byte, element 2j in the high nibble.
      absmax: float32 [n_blocks], the scale of each block.
      table: the 16 code values (float32).
      block: elements per block (even).
      xla: the XLA formulation, `xla(codes, absmax)` -> the same values in any shape; lowered
        off CPU, when the kernel is unavailable, and for inputs the kernel does not take.
      threads: kernel threads; 0 picks by size and CPU count (tests force a split).
    """
    fits = (
        codes.ndim == 1
        and absmax.ndim == 1
        and codes.dtype == jnp.uint8
        and absmax.dtype == jnp.float32
        and block % 2 == 0
        and codes.shape[0] * 2 == absmax.shape[0] * block
        and _unsharded_type(codes)
        and _unsharded_type(absmax)
    )
    # On a GPU/TPU host the kernel would never be lowered: do not build it there.
    if not (fits and kernel_host(available)):
        return xla(codes, absmax).reshape(-1)
    key = (tuple(float(v) for v in np.asarray(table, np.float32)), int(block), int(threads))
    return _decode(xla, key, codes, absmax)


def _one_device() -> bool:
    """True in a process with one device, or when `PQM_NATIVE=1` asks for the kernel anyway.

    With several devices (a mesh, or the tests' eight fake CPU devices) a weight split over them
    in Auto mode would be gathered whole into the kernel on every device, undoing the split that
    the mesh is for; the XLA path keeps it.
    """
    return os.environ.get("PQM_NATIVE") == "1" or jax.device_count() == 1


def kernel_host(available: Callable[[], bool]) -> bool:
    """True when a kernel whose `available()` builds and registers it can run in this process:
    not `PQM_NATIVE=0` (read here, when a program is traced, so that a process can trace one
    program with the kernels and one without: benchmarks count the FLOPs XLA cannot see inside
    them that way), the default backend is the CPU (on a GPU/TPU host it would never be lowered,
    so it is not built there), one device or `PQM_NATIVE=1` (`_one_device`), and the kernel
    built."""
    if os.environ.get("PQM_NATIVE") == "0":
        return False
    return jax.default_backend() == "cpu" and _one_device() and available()


def _unsharded_type(x: jax.Array) -> bool:
    """False for an array split over an Explicit mesh axis: the kernel's output would be
    replicated where the XLA path keeps the split, and both branches must agree on the type.
    (Auto-mode sharding is not part of the type; XLA gathers the kernel's inputs then.)"""
    sharding = getattr(jax.typeof(x), "sharding", None)
    return sharding is None or all(axis is None for axis in sharding.spec)


def call_kernel(
    target: str, shape: tuple[int, ...], *arrays: jax.Array, table: Any = None, **attrs: int
) -> jax.Array:
    """The FFI call of a kernel registered as `target`: float32 output of `shape`; the arguments
    `arrays`, then (4-bit kernels) the 16 code values `table` as a float32 array; integer
    attributes passed as int64. Under `vmap` it runs once per batch element."""
    return call_kernels(target, (shape,), *arrays, table=table, **attrs)[0]


def call_kernels(
    target: str,
    shapes: tuple[tuple[int, ...], ...],
    *arrays: jax.Array,
    table: Any = None,
    vmap_method: str = "sequential",
    **attrs: int,
) -> tuple[jax.Array, ...]:
    """`call_kernel` for a kernel with one float32 output per entry of `shapes`. `vmap_method`
    as `jax.ffi.ffi_call`'s: "broadcast_all" for kernels that take any leading axes as batch."""
    out = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes)
    call = jax.ffi.ffi_call(target, out, vmap_method=vmap_method)
    ints = {name: np.int64(value) for name, value in attrs.items()}
    if table is not None:
        arrays = (*arrays, jnp.asarray(np.asarray(table, np.float32)))
    return tuple(call(*arrays, **ints))


def _kernel(key: tuple, codes: jax.Array, absmax: jax.Array) -> jax.Array:
    table, block, threads = key
    shape = (codes.shape[0] * 2,)
    return call_kernel(TARGET, shape, codes, absmax, table=table, block=block, threads=threads)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _decode(xla: XlaDecode, key: tuple, codes: jax.Array, absmax: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(
        codes,
        absmax,
        cpu=functools.partial(_kernel, key),
        default=lambda c, a: xla(c, a).reshape(-1),
    )


@_decode.defjvp
def _decode_jvp(xla, key, primals, tangents):
    # Linear in absmax: the tangent is the decode of absmax's tangent, taken on the XLA path,
    # which JAX can transpose for reverse mode (the FFI call has no transpose).
    codes, absmax = primals
    return _decode(xla, key, codes, absmax), xla(codes, tangents[1]).reshape(-1)
