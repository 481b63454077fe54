"""Long unmasked softmax attention on CPU in one native kernel (Whisper's encoder).

Why: XLA's CPU backend runs the encoder's 1,500 x 1,500 attention one (batch, head) pair at a
time as two products with the scores written out between them; `attention_cpu.cc` keeps a few
query rows' scores in cache from their product to the value product, and multiplies bfloat16
inputs in pairs with float32 sums (AVX512-BF16) instead of widening them first. Measured on 2
cores (tiny.en's shapes, batch 8, one layer): see `bench/bench_attention.py`.

`attend(q, k, v)` takes q [G, Tq, 64] (already scaled), k, v [G, Tk, 64], float32 or bfloat16,
and returns [G, Tq, 64] in v's dtype, or None where the kernel does not take the inputs (head size
not 64, mixed dtypes, no AVX-512 / AVX512-BF16 in this build, arrays split over an Explicit mesh
axis, a GPU/TPU host, `PQM_NATIVE=0`, several devices; see `native.kernel_host`). Results are close
to XLA's, not bit-equal (sums in the kernel's order; exp by its own polynomial, ~1 ulp).

Derivatives: the kernel computes values only. Under `jax.grad` / `jax.vjp` the whole call is
XLA's formulation (`xla`): forward value and gradient as without the kernel, at the same cost.
Inference (no differentiation) gets the kernel.
"""

from __future__ import annotations

import ctypes
import functools
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
CAPS = {F32: 1, BF16: 2}  # bits of PqmAttentionCaps(); AMX: bfloat16 on the tile unit
AMX = 4
HEAD = 64

Attention = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@functools.cache
def caps() -> int:
    """What this machine's build of the kernel can do (bits of `CAPS`); 0 when unbuilt."""
    if not native.load_target(SOURCE, SYMBOLS[F32], TARGETS[F32], "attention"):
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
    """True when the kernel runs attention in `dtype` in this process (see the module doc)."""
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


def _kernel(options: tuple, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    threads, tiles = options
    dtype = jnp.dtype(q.dtype)
    attrs = {"threads": threads} | ({"tiles": int(tiles)} if dtype == BF16 else {})
    return native.call_kernel(TARGETS[dtype], q.shape, q, k, v, **attrs).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend(xla: Attention, threads: int, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(q, k, v, cpu=functools.partial(_kernel, threads), default=xla)


def _attend_fwd(xla, options, q, k, v):
    # Under differentiation the forward value is XLA's, and its pullback keeps XLA's residuals:
    # training costs what it did without the kernel (no second forward pass in the backward).
    return jax.vjp(xla, q, k, v)


def _attend_bwd(xla, options, pullback, g):
    return pullback(g)


_attend.defvjp(_attend_fwd, _attend_bwd)
