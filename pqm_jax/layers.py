"""The single place where a weight meets an input.

Every projection of every model calls `dense`; the weight may be a plain array or any registered
`QuantizedTensor`, and an optional LoRA adapter adds its low-rank branch without ever forming
`W + s*B@A`. Quantisation and adaptation are therefore data, not model code.

A few rows (at most the mark's `max_rows`: a decoding step, or a one-speaker training step) times
a 4-bit weight marked `quant.native.matvec.Streamed` run a native CPU kernel that decodes the codes
on the fly: close to, not bit-equal with, the product by the dequantised weight, because it sums
in its own order.

In bfloat16 compute the products take bfloat16 operands and accumulate in float32 (`matmul`),
forward and backward: the form that matrix units run (AMX on Intel CPUs, tensor cores).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import lora as lora_lib
from pqm_jax.quant import base
from pqm_jax.quant.native import matvec
from pqm_jax.quant.native import rows as native_rows


def weight(w: Any, dtype: Any) -> jax.Array:
    """Dense view of a weight in `dtype`: table-lookup dequantisation for quantised tensors.

    Raises:
      TypeError: for a weight that is neither an array nor a registered quantised tensor.
    """
    if isinstance(w, base.QuantizedTensor):
        return w.dequantize(dtype)
    if isinstance(w, jax.Array | np.ndarray):
        return jnp.asarray(w, dtype)
    raise TypeError(
        f"dense(): unsupported weight type {type(w).__name__}; expected a jax/numpy array or a "
        f"QuantizedTensor of a registered scheme ({', '.join(base.registered_schemes())})."
    )


def matmul(x: jax.Array, w: jax.Array, *, wide: bool = False) -> jax.Array:
    """x @ w; with bfloat16 operands, accumulated in float32 and rounded to bfloat16 once, or with
    `wide` returned in float32 unrounded (for a consumer that reads float32 anyway: the logits).

    XLA's CPU backend gives a bfloat16 x bfloat16 -> bfloat16 product to its vector code (233
    GFLOP/s for 2048^2 on this project's 2-core Sapphire Rapids VM, below float32's 270) and the
    float32-accumulating form to the AMX tiles (1,525 GFLOP/s); the input gradient and the weight
    gradient take the same form (`_mixed`)."""
    if x.dtype == jnp.bfloat16 and w.dtype == jnp.bfloat16:
        return _mixed_wide(x, w) if wide else _mixed(x, w)
    return x @ w


@jax.custom_vjp
def _mixed(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _mixed_fwd(x, w):
    return _mixed(x, w), (x, w)


def _mixed_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = jnp.matmul(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    rows, grads = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = jnp.matmul(rows.T, grads, preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw  # dw only where w is trained; XLA drops it for a frozen base


_mixed.defvjp(_mixed_fwd, _mixed_bwd)


@jax.custom_vjp
def _mixed_wide(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.matmul(x, w, preferred_element_type=jnp.float32)


_mixed_wide.defvjp(lambda x, w: (_mixed_wide(x, w), (x, w)), _mixed_bwd)


def dense(
    x: jax.Array,
    w: Any,
    lora: lora_lib.LoraWeights | None = None,
    *,
    bias: jax.Array | None = None,
    rng: jax.Array | None = None,
) -> jax.Array:
    """y = x @ W (+ bias) + scale * dropout(x) @ A @ B.

    Args:
      x: [..., in] activations; the computation runs in x.dtype.
      w: [in, out] array or QuantizedTensor of logical shape [in, out].
      lora: optional adapter with a: [in, r], b: [r, out]; or a per-example bank with a: [batch, in,
        r], b: [batch, r, out] where batch is x's leading axis (each row uses its own adapter).
      bias: optional [out].
      rng: PRNG key for LoRA dropout; without it (inference) dropout is off.

    Returns:
      [..., out] in x.dtype.
    """
    y = matvec.matmul(x, w.inner) if _streamed(x, w) else None
    if y is None:
        y = matmul(x, weight(w, x.dtype))
    if lora is not None:
        y = y + lora_lib.branch(x, lora, rng=rng)
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y


def embed(ids: jax.Array, table: Any, dtype: Any = jnp.float32) -> jax.Array:
    """Rows of an [vocab, d] embedding table (plain or quantised) for integer `ids` [...]."""
    if isinstance(table, base.QuantizedTensor):
        return table.rows(ids, dtype)
    return weight(table, dtype)[ids]


# Rows of x up to which `attend` multiplies the table by x instead of x by the transposed table.
FEW_ROWS = 16


def _streamed(x: jax.Array, w: Any) -> bool:
    """Few rows times a weight marked for the kernel (see the module doc)."""
    return isinstance(w, matvec.Streamed) and math.prod(x.shape[:-1]) <= w.max_rows


def attend(x: jax.Array, table: Any, *, native: bool = False) -> jax.Array:
    """Logits against a tied embedding table: x [..., d] @ table[vocab, d].T -> [..., vocab].

    For a few rows (a decoding step) the product is formed as (table @ x.T).T: a matrix-vector
    product over the table as it is laid out. `x @ table.T` there makes XLA's CPU backend copy
    the transposed table (80 MB for Whisper's vocabulary at d 384) inside the product at every
    token: measured in a decoding loop of tiny.en on 2 cores, 2.8 against 2.2 ms a step for one
    row and 5.5 against 5.2 ms for eight. Many rows (training) keep `x @ table.T`, where the
    transposed output would be the larger copy. A `Streamed` 4-bit table (decoding, one-speaker
    training) with at most its `max_rows` rows goes to the native kernel, which reads the codes in
    place of the dense table. With `native` (a decoding step; no derivatives), a float32 table and
    few rows go to the float32 kernel (`quant.native.rows`). Many bfloat16 rows give float32
    logits, not rounded to bfloat16 (which the loss then widened again: two passes over
    [rows, vocab], 11 ms of tiny.en's 16-speaker bfloat16 step on 2 cores).
    """
    if _streamed(x, table):
        y = matvec.attend(x, table.inner)
        if y is not None:
            return y
    w = weight(table, x.dtype)
    rows = math.prod(x.shape[:-1])
    if rows > FEW_ROWS:
        return matmul(x, w.T, wide=True)
    flat = x.reshape(rows, x.shape[-1])
    y = native_rows.product(flat[None], w[None], transposed=True) if native else None
    if y is None:
        y = (w @ flat.T).T
    return y.reshape(*x.shape[:-1], w.shape[0])


def conv1d(
    x: jax.Array, w: Any, *, bias: jax.Array | None = None, stride: int = 1, padding: int = 0
) -> jax.Array:
    """1-D convolution, channels last: x [batch, time, in], w [width, in, out] (maybe quantised)."""
    k = weight(w, x.dtype)
    y = jax.lax.conv_general_dilated(
        x,
        k,
        window_strides=(stride,),
        padding=[(padding, padding)],
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    if bias is not None:
        y = y + bias.astype(x.dtype)
    return y
