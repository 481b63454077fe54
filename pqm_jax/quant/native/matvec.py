"""A few rows of activations times a 4-bit (NF4/FP4) weight, decoded on the fly on CPU.

Why: a decoding step multiplies 1-16 rows by every decoder weight and by the tied output
embedding, and is bound by reading them. `matvec_cpu.cc` reads the 4-bit codes (an eighth of
float32's bytes) and multiplies each decoded weight straight into float32 accumulators; no dense
copy is written. `layers.dense` and `layers.attend` use it for few rows times a `Streamed` weight:
decoding marks its 4-bit weights so for its prompt prefill and token loop
(`DecodeOptions.quantized_steps`). Unmarked weights (training, a vmapped bank of adapters, whose
few rows per speaker XLA merges into one large product) keep the XLA product. A mark in the pytree,
not a switch: jit caches programs by pytree structure, so the two paths never share one.

Each weight decodes to the float32 value `dequantize` gives it, but the kernel sums the products
in its own order (fused multiply-adds per lane, then across lanes), so results are close to
`x @ w.dequantize()`, not bit-equal, as any two matrix-product implementations are.

Inside a jitted function the kernel is lowered only for CPU (`lax.platform_dependent`); other
backends get the XLA product. Without the kernel (no compiler, `PQM_NATIVE=0`), off a CPU host,
and for inputs it does not take, `matmul` and `attend` return None and callers keep their own
product. Derivatives (in x, and in a float absmax) are the XLA product's, which JAX can transpose;
under `vmap` the kernel runs once per batch element.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax.quant import base, fourbit, native
from pqm_jax.quant import tree as qtree

TARGET = "pqm_four_bit_matvec"
SOURCE = pathlib.Path(__file__).with_name("matvec_cpu.cc")
IN_OUT, OUT_IN = 0, 1  # x @ W [in, out] as stored; x @ T[out, in].T (rows of T are dot products)
_CHUNK = 32  # elements of one load of codes in the kernel: blocks and rows must hold whole ones


@functools.cache
def available() -> bool:
    """True once the kernel is built, loaded and registered; the first call does the work."""
    return native.load_target(SOURCE, "PqmFourBitMatVec", TARGET, "4-bit matmul")


def matmul(x: jax.Array, w: Any, *, threads: int = 0) -> jax.Array | None:
    """x [..., K] @ w [K, N] -> [..., N] float32 for a 4-bit kernel `w`: a `FourBitTensor`
    [K, N], or a `tree.Transposed` one stored [N, K] (PyTorch's layout, in which `quantize_tree`
    stores linears). None when the kernel does not take these inputs (see the module doc).
    `threads` > 0 forces a split (tests); 0 picks by size."""
    q, layout = _unwrap(w)
    return None if q is None else _product(x, q, layout, threads)


def attend(x: jax.Array, table: Any, *, threads: int = 0) -> jax.Array | None:
    """x [..., d] @ table[V, d].T -> [..., V] float32 for a 4-bit `FourBitTensor` table (the
    logits against a tied embedding); None when the kernel does not take these inputs."""
    if not isinstance(table, fourbit.FourBitTensor):
        return None
    return _product(x, table, OUT_IN, threads)


def takes(w: Any) -> bool:
    """True when `matmul` (or `attend`, for a bare table) would run the kernel for `w` with
    float32 rows on this host: the caller may keep `w` quantised for it."""
    q, _ = _unwrap(w)
    return q is not None and _fits_weight(q) and _kernel_host()


@struct.dataclass
class Streamed(base.QuantizedTensor):
    """A 4-bit weight that `layers.dense` / `layers.attend` multiply by few rows with the kernel;
    everything else sees `inner` (dequantise, embedding rows)."""

    inner: Any

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.inner.shape

    @property
    def dtype(self) -> str:
        return self.inner.dtype

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        return self.inner.dequantize(dtype)

    def rows(self, ids: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
        return self.inner.rows(ids, dtype)


def stream(w: Any) -> Any:
    """`w` marked `Streamed` (its double-quantised absmax decoded once) when the kernel takes it
    on this host; else `w` unchanged."""
    return Streamed(inner=with_float_absmax(w)) if takes(w) else w


def with_float_absmax(w: Any) -> Any:
    """`w` with a double-quantised absmax decoded once to float32 (otherwise unchanged), so that a
    loop of products does not decode it again at every step."""
    if isinstance(w, qtree.Transposed):
        return w.replace(inner=with_float_absmax(w.inner))
    if isinstance(w, fourbit.FourBitTensor) and w.double_quant:
        return w.replace(absmax=w.absmax_f32(), absmax_scale=None, absmax_offset=None)
    return w


def _unwrap(w: Any) -> tuple[fourbit.FourBitTensor | None, int]:
    if isinstance(w, qtree.Transposed) and isinstance(w.inner, fourbit.FourBitTensor):
        return w.inner, OUT_IN
    if isinstance(w, fourbit.FourBitTensor):
        return w, IN_OUT
    return None, IN_OUT


def _fits_weight(q: fourbit.FourBitTensor) -> bool:
    """A 2-D tensor of whole blocks (a power of two >= 32) whose stored rows hold whole 32-element
    loads: then no load straddles a block, in either layout."""
    block = q.block_size
    return (
        len(q.shape) == 2
        and q._whole_blocks()
        and block >= _CHUNK
        and block & (block - 1) == 0
        and q.shape[1] % _CHUNK == 0
        and q.codes.ndim == 1
        and q.codes.dtype == jnp.uint8
    )


def _kernel_host() -> bool:
    # On a GPU/TPU host the kernel would never be lowered: do not build it there.
    return jax.default_backend() == "cpu" and available()


def _product(x: jax.Array, q: fourbit.FourBitTensor, layout: int, threads: int):
    if len(q.shape) != 2:
        return None
    k, n = q.shape if layout == IN_OUT else q.shape[::-1]
    fits = (
        x.ndim >= 1
        and x.shape[-1] == k
        and x.dtype == jnp.float32
        and _fits_weight(q)
        and all(native._unsharded_type(a) for a in (x, q.codes, q.absmax))
    )
    if not (fits and _kernel_host()):
        return None
    absmax = q.absmax_f32()
    if absmax.ndim != 1 or not native._unsharded_type(absmax):
        return None
    rows = math.prod(x.shape[:-1])
    key = (tuple(float(v) for v in q.TABLE), q.block_size, tuple(q.shape), layout, int(threads))
    y = _fused(key, x.reshape(rows, k), q.codes, absmax)
    return y.reshape(*x.shape[:-1], n)


def _xla(key: tuple, x: jax.Array, codes: jax.Array, absmax: jax.Array) -> jax.Array:
    """The same product by XLA: the dequantised weight (native decode on CPU), then a dot."""
    table, block, shape, layout, _ = key
    lookup = functools.partial(fourbit._lookup, np.asarray(table, np.float32), block=block)
    w = native.decode(codes, absmax, table=np.asarray(table), block=block, xla=lookup)
    w = w.reshape(shape)
    contract = 0 if layout == IN_OUT else 1
    return jax.lax.dot_general(x, w, (((1,), (contract,)), ((), ())))


def _kernel(key: tuple, x: jax.Array, codes: jax.Array, absmax: jax.Array) -> jax.Array:
    table, block, shape, layout, threads = key
    n = shape[1] if layout == IN_OUT else shape[0]
    out = jax.ShapeDtypeStruct((x.shape[0], n), jnp.float32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(
        x,
        codes,
        absmax,
        jnp.asarray(np.asarray(table, np.float32)),
        block=np.int64(block),
        layout=np.int64(layout),
        threads=np.int64(threads),
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fused(key: tuple, x: jax.Array, codes: jax.Array, absmax: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(
        x,
        codes,
        absmax,
        cpu=functools.partial(_kernel, key),
        default=functools.partial(_xla, key),
    )


def _fused_jvp(key, primals, tangents):
    # The tangent is the XLA product's (the FFI call has no transpose rule for reverse mode).
    x, codes, absmax = primals
    dx, _, da = tangents
    y = _fused(key, x, codes, absmax)
    zero = jax.custom_derivatives.SymbolicZero
    if isinstance(da, zero):
        if isinstance(dx, zero):
            return y, jnp.zeros_like(y)
        return y, _xla(key, dx, codes, absmax)  # linear in x
    dx = jnp.zeros_like(x) if isinstance(dx, zero) else dx
    _, dy = jax.jvp(lambda x, a: _xla(key, x, codes, a), (x, absmax), (dx, da))
    return y, dy


_fused.defjvp(_fused_jvp, symbolic_zeros=True)
