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
backends get the XLA product. As for the decode kernel, a process with several devices keeps the
XLA product unless `PQM_NATIVE=1` asks for the kernel (`native._one_device`). Without the kernel
(no compiler, `PQM_NATIVE=0`), off a CPU host, and for inputs it does not take, `matmul` and
`attend` return None and callers keep their own product.

Reverse mode only (a custom VJP; training and decoding need no forward mode): the gradient
in x is the kernel's product in the other layout (dy @ W.T), so a training step never forms a
dense copy of the weight; the gradient in a float absmax is the XLA product's. Under `vmap` the
kernel runs once per batch element.

Training marks its 4-bit weights `Streamed(max_rows=TRAIN_ROWS)` when it adapts one speaker at a
time on one device (`train.adapt`): a step's 32 decoder rows then read the 51,864 x 384 codes of the
tied embedding twice (logits, and their gradient) instead of decoding 80 MB of float32 and
multiplying it twice (on 2 cores: 19 against 27 ms at 32 rows, 37 against 43 ms at 64, and worse
than the dense path at 128, where the product is compute-bound).
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
DECODE_ROWS = 16  # rows up to which `layers` multiplies a decoding step's weights by the kernel
TRAIN_ROWS = 64  # the same for a training step's weights (forward and gradient products)


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
    return q is not None and _fits_weight(q) and native.kernel_host(available)


@struct.dataclass
class Streamed(base.QuantizedTensor):
    """A 4-bit weight that `layers.dense` / `layers.attend` multiply by at most `max_rows` rows
    with the kernel; everything else sees `inner` (dequantise, embedding rows)."""

    inner: Any
    max_rows: int = struct.field(pytree_node=False, default=DECODE_ROWS)

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


def stream(w: Any, max_rows: int = DECODE_ROWS) -> Any:
    """`w` marked `Streamed` (its double-quantised absmax decoded once) when the kernel takes it
    on this host; else `w` unchanged."""
    return Streamed(inner=with_float_absmax(w), max_rows=max_rows) if takes(w) else w


def stream_tree(tree: Any, max_rows: int) -> Any:
    """Every 4-bit weight of `tree` that the kernel takes marked `Streamed` for up to `max_rows`
    rows; other leaves unchanged."""
    return jax.tree.map(lambda w: stream(w, max_rows), tree, is_leaf=base.is_quantized)


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
    if not (fits and native.kernel_host(available)):
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
    attrs = {"block": block, "layout": layout, "threads": threads}
    return native.call_kernel(TARGET, (x.shape[0], n), x, codes, absmax, table=table, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(key: tuple, x: jax.Array, codes: jax.Array, absmax: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(
        x,
        codes,
        absmax,
        cpu=functools.partial(_kernel, key),
        default=functools.partial(_xla, key),
    )


def _flipped(key: tuple) -> tuple:
    """The key of the product by the same stored weight in the other layout (W.T for W)."""
    table, block, shape, layout, threads = key
    return (table, block, shape, OUT_IN if layout == IN_OUT else IN_OUT, threads)


def _fused_fwd(key, x, codes, absmax):
    return _fused(key, x, codes, absmax), (x, codes, absmax)


def _fused_bwd(key, res, dy):
    # In x: dy @ W.T, the kernel in the other layout, so reverse mode never forms the dense
    # weight. In a float absmax: the XLA product's cotangent (its dense x.T @ dy is dropped by
    # XLA when nothing uses it: a frozen base).
    x, codes, absmax = res
    dx = _fused(_flipped(key), dy, codes, absmax)
    _, pull = jax.vjp(lambda a: _xla(key, x, codes, a), absmax)
    (da,) = pull(dy)
    return dx, np.zeros(codes.shape, jax.dtypes.float0), da


_fused.defvjp(_fused_fwd, _fused_bwd)
