"""Unmasked softmax attention on CPU in one native kernel (Whisper's encoder, cross-attention).

Why: XLA's CPU backend runs the encoder's 1,500 x 1,500 attention one (batch, head) pair at a
time as two products with the scores written out between them; `attention_cpu.cc` keeps a few
query rows' scores in cache from their product to the value product, and multiplies bfloat16
inputs on the AMX tile unit (or in AVX512-BF16 pairs) with float32 sums instead of widening them
first. Measured on 2 cores (tiny.en's shapes, batch 8, one layer): `bench/bench_attention.py`.
`models.common.attention.attend` uses it at every length (short sequences too: a 2 s window's
100 frames, training's cross-attention), with its own XLA formulation where it does not run.

`attend(q, k, v)` takes q [G, Tq, 64] (already scaled), k, v [G, Tk, 64], float32 or bfloat16,
and returns [G, Tq, 64] in v's dtype, or None where the kernel does not take the inputs (head size
not 64, mixed dtypes, no AVX-512 / AVX512-BF16 in this build, arrays split over an Explicit mesh
axis, a GPU/TPU host, `PQM_NATIVE=0` or `PQM_NATIVE_ATTENTION=0`, several devices; see
`native.kernel_host`). Results are close to XLA's, not bit-equal (sums in the kernel's order;
exp by its own polynomial, ~1 ulp).

Derivatives: in float32 a second kernel computes the gradients of q, k and v (flash-attention's
backward: the weights recomputed per few query rows from the forward's log-normaliser per row,
so no [Tq, Tk] matrix is kept between the passes). In bfloat16, under `jax.grad` / `jax.vjp`
both passes are the float32 kernels on widened inputs, the output and gradients rounded back to
bfloat16 (there is no bfloat16 backward kernel): on 2 AMD EPYC cores (AVX512-BF16, no AMX)
forward + backward took 0.52 against 1.51 s with XLA's bfloat16 formulation at [48, 1500, 64]
(tiny.en's encoder, batch 8), 52 against 127 ms at 400 frames, 14 against 20 ms at 100.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from pqm_jax.quant import native
from pqm_jax.quant.native import build

SOURCE = pathlib.Path(__file__).with_name("attention_cpu.cc")
F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
TARGETS = {F32: "pqm_attention_f32", BF16: "pqm_attention_bf16"}
SYMBOLS = {F32: "PqmAttentionF32", BF16: "PqmAttentionBF16"}
GRAD_TARGET, GRAD_SYMBOL = "pqm_attention_grad_f32", "PqmAttentionGradF32"
CAPS = {F32: 1, BF16: 2}  # bits of PqmAttentionCaps(); AMX: bfloat16 on the tile unit
AMX = 4
HEAD = 64

Attention = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@functools.cache
def caps() -> int:
    """What this machine's build of the kernel can do (bits of `CAPS`); 0 when unbuilt."""
    float32 = ((SYMBOLS[F32], TARGETS[F32]), (GRAD_SYMBOL, GRAD_TARGET))
    if not all(native.load_target(SOURCE, s, t, "attention") for s, t in float32):
        return 0
    lib = build.load(SOURCE, cxx=build.compiler(), cache=build.cache_dir())
    lib.PqmAttentionCaps.restype = ctypes.c_int32
    found = int(lib.PqmAttentionCaps())
    if found & CAPS[BF16] and not native.load_target(
        SOURCE, SYMBOLS[BF16], TARGETS[BF16], "bfloat16 attention"
    ):
        found &= ~(CAPS[BF16] | AMX)
    return found


def supports(dtype) -> bool:
    """True when the kernel runs attention in `dtype` in this process (see the module doc);
    `PQM_NATIVE_ATTENTION=0` (read when a program is traced) turns this kernel alone off."""
    if os.environ.get("PQM_NATIVE_ATTENTION", "1") == "0":
        return False
    dtype = jnp.dtype(dtype)
    return dtype in CAPS and native.kernel_host(lambda: bool(caps() & CAPS[dtype]))


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    xla: Attention,
    threads: int = 0,
    tiles: bool = True,
):
    """softmax(q @ k.T) @ v per group, [G, Tq, 64] in v's dtype, or None (see the module doc).

    Args:
      q: [G, Tq, 64] queries, scaled; k, v: [G, Tk, 64]; all float32 or all bfloat16.
      xla: the same attention in XLA (lowered off CPU, and differentiated for gradients).
      threads: > 0 forces a split (tests); 0 picks by size.
      tiles: bfloat16 products on the AMX tile unit where the CPU has one (False: AVX512-BF16
        pairs; tests).
    """
    fits = (
        q.ndim == k.ndim == v.ndim == 3
        and q.shape[2] == k.shape[2] == v.shape[2] == HEAD
        and q.shape[0] == k.shape[0] == v.shape[0]
        and k.shape[1] == v.shape[1] > 0
        and q.dtype == k.dtype == v.dtype
        and all(native._unsharded_type(a) for a in (q, k, v))
    )
    if not (fits and supports(q.dtype)):
        return None
    return _attend(xla, (int(threads), bool(tiles)), q, k, v)


def _ffi(target: str, shapes: tuple, *arrays: jax.Array, **attrs: int):
    # Under vmap one call takes every element: the kernels fold leading axes into their groups.
    return native.call_kernels(target, shapes, *arrays, vmap_method="broadcast_all", **attrs)


def _forward(options: tuple, q: jax.Array, k: jax.Array, v: jax.Array):
    """The kernel's (out in v's dtype, lse float32 [G, Tq] or None for bfloat16)."""
    threads, tiles = options
    if jnp.dtype(q.dtype) == F32:
        return _ffi(TARGETS[F32], (q.shape, q.shape[:2]), q, k, v, threads=threads)
    (out,) = _ffi(TARGETS[BF16], (q.shape,), q, k, v, threads=threads, tiles=int(tiles))
    return out.astype(v.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend(xla: Attention, options: tuple, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    cpu = lambda q, k, v: _forward(options, q, k, v)[0]
    return jax.lax.platform_dependent(q, k, v, cpu=cpu, default=xla)


def _attend_fwd(xla, options, q, k, v):
    if jnp.dtype(q.dtype) != F32:
        # bfloat16: the float32 kernels on widened inputs (no bfloat16 backward kernel yet); the
        # output, and in `_attend_bwd` the gradients, are rounded back to bfloat16.
        out, res = _attend_fwd(xla, options, *(a.astype(jnp.float32) for a in (q, k, v)))
        return out.astype(v.dtype), res
    # float32: the kernel's forward, keeping only the softmax's log-normaliser per row; the
    # backward kernel recomputes the weights from it (no [Tq, Tk] residual per head).
    no_lse = lambda q, k, v: (xla(q, k, v), jnp.zeros(q.shape[:2], jnp.float32))
    out, lse = jax.lax.platform_dependent(
        q, k, v, cpu=functools.partial(_forward, options), default=no_lse
    )
    return out, (q, k, v, out, lse)


def _attend_bwd(xla, options, res, g):
    q, k, v, out, lse = res  # float32 (bfloat16 calls widened in `_attend_fwd`)
    threads, _ = options
    grads = lambda *a: tuple(_ffi(GRAD_TARGET, (q.shape, k.shape, v.shape), *a, threads=threads))
    xla_grads = lambda q, k, v, out, lse, g: jax.vjp(xla, q, k, v)[1](g)
    dq, dk, dv = jax.lax.platform_dependent(
        q, k, v, out, lse, g.astype(jnp.float32), cpu=grads, default=xla_grads
    )
    return dq.astype(g.dtype), dk.astype(g.dtype), dv.astype(g.dtype)


_attend.defvjp(_attend_fwd, _attend_bwd)
