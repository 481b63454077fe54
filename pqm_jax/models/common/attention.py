"""Transformer pieces shared by the Whisper encoder and decoder: layer norm, GELU MLP, attention.

All functions are pure: `f(params, inputs)` with params as nested dicts (HF names, kernels [in,
out]) whose kernels may be quantised, and an optional LoRA subtree mirroring the params nesting.
Every projection goes through `layers.dense`.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp

from pqm_jax import layers
from pqm_jax import lora as lora_lib
from pqm_jax.quant.native import attention as native_attention
from pqm_jax.quant.native import rows as native_rows

LN_EPS = 1e-5
# Query x key positions from which unmasked attention runs head by head (see _attend_per_head).
LONG_ATTENTION = 256 * 256


def fold(rng: jax.Array | None, *names: str | int) -> jax.Array | None:
    """A key derived from `rng` and a call-site name (None stays None: dropout off)."""
    if rng is None:
        return None
    for n in names:
        rng = jax.random.fold_in(rng, n if isinstance(n, int) else zlib.crc32(n.encode()))
    return rng


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when `rng` is None or `rate` is 0."""
    if rng is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def layer_norm(p: dict, x: jax.Array) -> jax.Array:
    """LayerNorm over the last axis (eps 1e-5), statistics in float32, result in x.dtype."""
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + LN_EPS)
    h = h * layers.weight(p["scale"], jnp.float32) + layers.weight(p["bias"], jnp.float32)
    return h.astype(x.dtype)


def proj(p: dict, x: jax.Array, lora: Any, rng: jax.Array | None, name: str) -> jax.Array:
    """`layers.dense` on module `p[name]` with the adapter `lora[name]` (if any)."""
    m = p[name]
    return layers.dense(
        x, m["kernel"], lora_lib.sub(lora, name), bias=m.get("bias"), rng=fold(rng, name)
    )


def mlp(p: dict, x: jax.Array, lora: Any, rng: jax.Array | None, rate: float) -> jax.Array:
    """fc2(dropout(gelu(fc1(x)))) with exact (erf) GELU, as HF/openai Whisper. x: [B, T, d]."""
    h = jax.nn.gelu(proj(p, x, lora, rng, "fc1"), approximate=False)
    h = dropout(h, rate, fold(rng, "act"))
    return proj(p, h, lora, rng, "fc2")


def to_heads(x: jax.Array, heads: int) -> jax.Array:
    """[B, T, d] -> head-major [B, heads, T, d // heads] (the layout of cached keys/values)."""
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def from_heads(x: jax.Array) -> jax.Array:
    """[B, heads, T, head_dim] -> [B, T, heads * head_dim]."""
    b, h, t, c = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * c)


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *, native: bool = False
) -> jax.Array:
    """Softmax attention over projected queries that are already scaled by head_dim**-0.5.

    Keys and values are head-major, so that both products are plain batched matrix products
    over (batch, head) with no transposes of the (long, cached) key/value arrays. Unmasked
    attention runs in the native CPU kernel where it runs (`_attend_per_head` from
    LONG_ATTENTION positions, `_attend_fused` below), else in XLA.

    Args:
      q: [B, Tq, d] queries (HF scales the q projection before the dot product; so do we).
      k, v: [B, heads, Tk, head_dim].
      mask: boolean, broadcastable to [B, heads, Tq, Tk] (True = may attend), or None.
      native: a decoding step's few queries (see `_attend_rows`); no derivatives then.

    Returns:
      [B, Tq, d]; scores and softmax in float32, output in v.dtype.
    """
    qh = to_heads(q, k.shape[1])
    if native and mask is None:
        b, h, tq, c = qh.shape
        o = _attend_rows(qh.reshape(b * h, tq, c), _flat(k), _flat(v), None)
        if o is not None:
            return from_heads(o.reshape(b, h, tq, c))
    if mask is None and qh.shape[2] * k.shape[2] >= LONG_ATTENTION:
        return from_heads(_attend_per_head(qh, k, v))
    if mask is None:
        o = _attend_fused(qh, k, v)
        if o is not None:
            return from_heads(o)
    s = jnp.einsum("bhqc,bhkc->bhqk", qh, k, preferred_element_type=jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return from_heads(jnp.einsum("bhqk,bhkc->bhqc", w, v))


def attend_flat(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    heads: int,
    native: bool = False,
) -> jax.Array:
    """`attend` with keys and values as [B * heads, Tk, head_dim] (a decoding cache's layout):
    the same products and softmax per (row, head), with batch and heads as one axis throughout.
    mask: boolean, broadcastable to [B * heads, Tq, Tk], or None."""
    b, tq, d = q.shape
    qh = to_heads(q, heads).reshape(b * heads, tq, d // heads)
    o = _attend_rows(qh, k, v, mask) if native else None
    if o is None:
        s = jnp.einsum("nqc,nkc->nqk", qh, k, preferred_element_type=jnp.float32)
        if mask is not None:
            s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        o = jnp.einsum("nqk,nkc->nqc", w, v)
    return from_heads(o.reshape(b, heads, tq, d // heads))


def _flat(x: jax.Array) -> jax.Array:
    """[B, heads, T, c] -> [B * heads, T, c] (a free reshape)."""
    return x.reshape(-1, *x.shape[2:])


def _attend_rows(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None
) -> jax.Array | None:
    """Attention of a few queries per (row, head) by the native CPU kernel (`quant.native.rows`):
    q [G, Tq, c], k, v [G, Tk, c] -> [G, Tq, c], or None where the kernel does not take them.

    A decoding step reads every cached key and value for one query; XLA's CPU dot first copies
    (packs) them, the kernel reads them once (tiny.en's cross-attention at batch 8 on 2 cores:
    4.8 against 5.7 ms for four layers). Scores and softmax stay XLA's, in float32; the products
    sum in the kernel's order, so results are close, not bit-equal."""
    if q.shape[1] > native_rows.MAX_ROWS:
        return None
    s = native_rows.product(q, k, transposed=True)
    if s is None:
        return None
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    return native_rows.product(jax.nn.softmax(s, axis=-1), v, transposed=False)


def _attend_per_head(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Unmasked attention over long sequences: [B, H, Tq, c] -> [B, H, Tq, c].

    On CPU (head size 64, float32 or bfloat16) a native kernel fuses the scores, softmax and
    value product (`quant.native.attention`; tiny.en's encoder layer at batch 8 on 2 cores: about
    1.7-2x faster than `_per_head` in float32, 4.4x in bfloat16 on AMX), with a float32 backward
    kernel for gradients (bfloat16 ones too, on widened inputs). Elsewhere it is `_per_head`.

    `PQM_ATTENTION_LOOP=0` (read when a program is traced) makes that XLA formulation
    `_batched` instead, all scores at once: not for running (the memory of every head's scores),
    but for counting, since XLA's cost analysis counts a loop's body once, i.e. one head of B * H
    (`bench/limits.xla_only` sets it).
    """
    b, h, tq, c = q.shape
    flat = lambda x: x.reshape(b * h, *x.shape[2:])
    q, k, v = flat(q), flat(k), flat(v)
    xla = _batched if os.environ.get("PQM_ATTENTION_LOOP", "1") == "0" else _per_head
    o = native_attention.attend(q, k, v, xla=xla)
    return (xla(q, k, v) if o is None else o).reshape(b, h, tq, c)


def _attend_fused(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array | None:
    """Short unmasked attention, [B, H, Tq, c] -> [B, H, Tq, c], by the native CPU kernel where
    it runs, else None (the caller's batched formulation).

    The kernel is faster than XLA's batched products at short lengths too: in the 16-speaker
    adaptation step of tiny.en (2 s windows: the encoder's 100 x 100, the decoder's 16 x 100
    cross-attention) 1.118 against 1.146 s a step on 2 cores of an AMD EPYC (1.197 against 1.237
    s without the gradient barrier; `bench/bench_step_switches.py`); on a Xeon the encoder
    layer's forward and backward took 14.2 against 23.0 ms. Sums in the kernel's order: close to
    XLA's, not bit-equal.
    """
    b, h, tq, c = q.shape
    flat = lambda x: x.reshape(b * h, *x.shape[2:])
    o = native_attention.attend(flat(q), flat(k), flat(v), xla=_batched)
    return None if o is None else o.reshape(b, h, tq, c)


def _batched(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Unmasked attention as two batched products: [G, Tq, c] -> [G, Tq, c] (the formulation of
    `attend` for short sequences, on [G] groups)."""
    s = jnp.einsum("gqc,gkc->gqk", q, k, preferred_element_type=jnp.float32)
    w = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("gqk,gkc->gqc", w, v)


def _per_head(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Unmasked attention one (batch, head) pair at a time: [G, Tq, c] -> [G, Tq, c].

    Batched, the encoder's [B, H, 1500, 1500] scores (432 MB for tiny at batch 8) stream through
    memory several times; one head's 9 MB stay in cache, which is ~3x faster on CPU (and below
    PyTorch's fused SDPA). Softmax normalisation is applied after the value product.
    """

    def one(args):
        qi, ki, vi = args
        s = jnp.einsum("qc,kc->qk", qi, ki, preferred_element_type=jnp.float32)
        e = jnp.exp(s - s.max(-1, keepdims=True))
        o = jnp.einsum("qk,kc->qc", e.astype(vi.dtype), vi, preferred_element_type=jnp.float32)
        return (o / e.sum(-1, keepdims=True)).astype(vi.dtype)

    return jax.lax.map(one, (q, k, v))


def query(p: dict, x: jax.Array, lora: Any, rng: jax.Array | None, *, heads: int) -> jax.Array:
    """Scaled query projection q_proj(x) * head_dim**-0.5. x: [B, T, d] -> [B, T, d]."""
    q = proj(p, x, lora, rng, "q_proj")
    return q * jnp.asarray((q.shape[-1] // heads) ** -0.5, q.dtype)


def keys_values(
    p: dict, x: jax.Array, lora: Any, rng: jax.Array | None, *, heads: int
) -> tuple[jax.Array, jax.Array]:
    """(k_proj(x), v_proj(x)) head-major, each [B, heads, T, head_dim]; k_proj has no bias."""
    k, v = proj(p, x, lora, rng, "k_proj"), proj(p, x, lora, rng, "v_proj")
    return to_heads(k, heads), to_heads(v, heads)


def output(p: dict, o: jax.Array, lora: Any, rng: jax.Array | None) -> jax.Array:
    """out_proj of the attention output [B, T, d]."""
    return proj(p, o, lora, rng, "out_proj")


def causal_mask(q_len: int, k_len: int, offset: jax.Array | int = 0) -> jax.Array:
    """[1, 1, q_len, k_len] boolean: query t (at absolute position offset + t) sees keys <= it."""
    qpos = offset + jnp.arange(q_len)[:, None]
    return (jnp.arange(k_len)[None, :] <= qpos)[None, None]
