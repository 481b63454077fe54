"""A few rows times float32 matrices on CPU: a decoding step's logits and its attention.

Why: a greedy step multiplies 1-16 rows by the 51,864 x d tied embedding, and per (row, head) one
query by the cached keys and values of 1,500 encoder frames. Those products are bound by reading
the matrices; XLA's CPU dot packs (copies) the matrix first. `rows_cpu.cc` reads each element
once into float32 accumulators (tiny.en's cross-attention at batch 8 on 2 cores: 31 against 26
GB/s for four layers with softmax, 43 GB/s for one layer's keys alone). Decoding asks for it
(`DecodeOptions.native_steps`); nothing else does.

Results are close to XLA's dot, not bit-equal (the kernel sums in its own order), so decoded
tokens may differ from XLA's where two candidates are near-tied. No derivatives: the products
are for decoding only (`jax.grad` through them raises). Under `vmap` the kernel runs once per
batch element. As the 4-bit kernels: lowered only for CPU inside jit (`lax.platform_dependent`),
only in a process with one device unless `PQM_NATIVE=1` (`native._one_device`), and never with
`PQM_NATIVE=0` or without a compiler; `product` then returns None and callers keep XLA's product.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp

from pqm_jax.quant import native

TARGET = "pqm_few_rows"
SOURCE = pathlib.Path(__file__).with_name("rows_cpu.cc")
IN_OUT, OUT_IN = 0, 1  # x @ W [K, N]; x @ T[N, K].T
MAX_ROWS = 16  # rows per matrix up to which callers should use the kernel


@functools.cache
def available() -> bool:
    """True once the kernel is built, loaded and registered; the first call does the work."""
    return native.load_target(SOURCE, "PqmFewRows", TARGET, "few-row product")


def product(x: jax.Array, w: jax.Array, *, transposed: bool, threads: int = 0) -> jax.Array | None:
    """out[g] = x[g] @ w[g] (or x[g] @ w[g].T with `transposed`), float32 [G, R, N].

    Args:
      x: float32 [G, R, K].
      w: float32 [G, K, N], or [G, N, K] with `transposed`; a leading 1 shares the matrix.
      transposed: w holds the product's columns as rows (keys; an embedding table).
      threads: > 0 forces a split (tests); 0 picks by size.

    Returns None when the kernel does not take these inputs (see the module doc): shapes, dtypes,
    K (transposed) or N (else) not a multiple of 16, arrays split over an Explicit mesh axis.
    """
    if x.ndim != 3 or w.ndim != 3 or x.dtype != jnp.float32 or w.dtype != jnp.float32:
        return None
    g, _, k = x.shape
    n, wk = (w.shape[1], w.shape[2]) if transposed else (w.shape[2], w.shape[1])
    fits = (
        w.shape[0] in (1, g)
        and wk == k
        and (k if transposed else n) % 16 == 0
        and all(native._unsharded_type(a) for a in (x, w))
    )
    if not (fits and native.kernel_host(available)):
        return None
    layout = OUT_IN if transposed else IN_OUT
    return _product(layout, int(threads), x, w)


def _xla(layout: int, x: jax.Array, w: jax.Array) -> jax.Array:
    matrix = "nk" if layout == OUT_IN else "kn"
    if w.shape[0] == 1:
        return jnp.einsum(f"grk,{matrix}->grn", x, w[0])
    return jnp.einsum(f"grk,g{matrix}->grn", x, w)


def _kernel(layout: int, threads: int, x: jax.Array, w: jax.Array) -> jax.Array:
    n = w.shape[1] if layout == OUT_IN else w.shape[2]
    shape = (*x.shape[:2], n)
    return native.call_kernel(TARGET, shape, x, w, layout=layout, threads=threads)


def _product(layout: int, threads: int, x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(
        x,
        w,
        cpu=functools.partial(_kernel, layout, threads),
        default=functools.partial(_xla, layout),
    )
