"""A residual stream's gradient computed once per block on CPU: `gradient_barrier`.

Why: in a residual network the gradient of the stream is a running sum; each block adds its
contribution to the gradient arriving from the blocks above. XLA's CPU fusion duplicates cheap
elementwise producers into every consumer rather than writing them out, so each block's gradient
fusion re-adds the contributions of every block above it (a sum over the whole stack, once per
layer: quadratic in depth), and once more for each layout its consumers ask for (the flattened
rows of the frozen products and the per-speaker rows of the adapters). In the 16-speaker
adaptation step of tiny.en (`bench/bench_adapt_limit.py`'s program) the lowest encoder block's
fusion read 103 operands, twice. `gradient_barrier(x)` is the identity whose cotangent passes
through a native call (`barrier_cpu.cc`, an aliased no-op) that fusion cannot see through: the sum
is written once and every consumer reads it. The same sums: in Whisper's step bit for bit (XLA's
fused sum had run in the same order); in the Conformer the additions associate differently
(gradients within float32 rounding, ~1e-6 relative). On 2 cores of an AMD EPYC the Whisper step
took 1.146 against 1.237 s (`bench/bench_step_switches.py`); a Conformer's LoRA gradient (12
encoder and 6 decoder layers of width 256, batch 8 of 4 s) 0.67-0.83 against 0.99-1.14 s.

The forward pass is untouched (the primal is `x` itself, so inference and decoding never see the
call). Reverse mode only (a custom VJP; `jax.jvp` through it raises). As the other kernels: only
in a process with one device unless `PQM_NATIVE=1` (`native.kernel_host`), lowered only for CPU
inside jit (`lax.platform_dependent`), never with `PQM_NATIVE=0` or `PQM_NATIVE_BARRIER=0` (read
when a program is traced) or without a compiler, and not for arrays split over an Explicit mesh
axis (the call would gather them); the identity stays plain there.
"""

from __future__ import annotations

import functools
import os
import pathlib

import jax

from pqm_jax.quant import native

TARGET = "pqm_materialize"
SOURCE = pathlib.Path(__file__).with_name("barrier_cpu.cc")


@functools.cache
def available() -> bool:
    """True once the kernel is built, loaded and registered; the first call does the work."""
    return native.load_target(SOURCE, "PqmMaterialize", TARGET, "gradient barrier")


def enabled() -> bool:
    """True when `gradient_barrier` inserts the call in programs traced now (module doc)."""
    if os.environ.get("PQM_NATIVE_BARRIER", "1") == "0":
        return False
    return native.kernel_host(available)


def gradient_barrier(x: jax.Array) -> jax.Array:
    """x, with its cotangent written out once before it flows on (see the module doc)."""
    if not (enabled() and native._unsharded_type(x)):
        return x
    return _barrier(x)


def _materialize(g: jax.Array) -> jax.Array:
    call = jax.ffi.ffi_call(
        TARGET,
        jax.ShapeDtypeStruct(g.shape, g.dtype),
        vmap_method="broadcast_all",  # an identity takes any leading axes
        input_output_aliases={0: 0},
    )
    return call(g)


@jax.custom_vjp
def _barrier(x: jax.Array) -> jax.Array:
    return x


def _barrier_fwd(x):
    return x, None


def _barrier_bwd(_, g):
    return (jax.lax.platform_dependent(g, cpu=_materialize, default=lambda g: g),)


_barrier.defvjp(_barrier_fwd, _barrier_bwd)
