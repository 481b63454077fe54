"""Relative-position multi-head self-attention of the Conformer (ESPnet "latest" rel_pos_type).

ESPnet's `RelPositionalEncoding` gives a [2T - 1, d] table whose row k encodes the relative
position T - 1 - k (from T - 1 down to -(T - 1)), sin in even and cos in odd channels.
`RelPositionMultiHeadedAttention` scores query i against key j as

    ((q_i + u) . k_j + (q_i + v) . P[i - j]) / sqrt(d_k),   P = linear_pos(table)

(Transformer-XL with learned biases u = pos_bias_u, v = pos_bias_v per head). ESPnet selects the
P[i - j] column with a pad-and-reshape "rel_shift"; here it is an explicit gather, which is the same
arithmetic and reads as what it means. Params (kernels [in, out], maybe quantised):

    linear_q, linear_k, linear_v, linear_out {kernel [d, d], bias [d]}, linear_pos {kernel [d, d]},
    pos_bias_u [heads, d_k], pos_bias_v [heads, d_k]
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import layers
from pqm_jax import lora as lora_lib
from pqm_jax.models.common import attention as attn


def table(length: int, d_model: int) -> np.ndarray:
    """ESPnet's relative position table [2 * length - 1, d_model] (float32): row k is position
    length - 1 - k, channels (sin, cos) interleaved with frequencies 10000**(-2i / d_model)."""
    rel = np.arange(length - 1, -length, -1, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * -(math.log(10000.0) / d_model))
    pe = np.zeros((2 * length - 1, d_model), np.float32)
    pe[:, 0::2] = np.sin(rel * div)
    pe[:, 1::2] = np.cos(rel * div)
    return pe


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """[B, T, d] -> [B, T, heads, d // heads]."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def rel_shift(bd: jax.Array) -> jax.Array:
    """[..., T, 2T - 1] scores against table rows -> [..., T, T] with out[i, j] = bd[i, T-1-i+j]
    (the row of relative position i - j)."""
    t = bd.shape[-2]
    idx = (t - 1) - jnp.arange(t)[:, None] + jnp.arange(t)[None, :]
    idx = jnp.broadcast_to(idx, (*bd.shape[:-1], t))
    return jnp.take_along_axis(bd, idx, axis=-1)


def self_attention(
    p: dict,
    x: jax.Array,
    pos: jax.Array,
    mask: jax.Array | None,
    lora: Any,
    rng: jax.Array | None,
    *,
    heads: int,
    dropout_rate: float = 0.0,
) -> jax.Array:
    """Relative-position self-attention.

    Args:
      p: params of one `self_attn` module (see the module docstring).
      x: [B, T, d] normalised input.
      pos: [2T - 1, d] relative position table (`table(T, d)`, maybe scaled by dropout).
      mask: boolean [B, T] of valid key frames (True = attend), or None.
      lora: adapters of this module (`linear_q` ... `linear_out`; `linear_pos` too if present).
      rng: dropout key (LoRA and attention-weight dropout); None at inference.
      heads: number of heads.
      dropout_rate: dropout on the attention weights.

    Returns:
      [B, T, d] after linear_out.
    """
    b, t, d = x.shape
    dk = d // heads
    q = split_heads(attn.proj(p, x, lora, rng, "linear_q"), heads)  # [B, T, H, dk]
    k = split_heads(attn.proj(p, x, lora, rng, "linear_k"), heads)
    v = split_heads(attn.proj(p, x, lora, rng, "linear_v"), heads)
    pm = p["linear_pos"]
    r = layers.dense(pos.astype(x.dtype), pm["kernel"], lora_lib.sub(lora, "linear_pos"))
    r = r.reshape(2 * t - 1, heads, dk)
    u = layers.weight(p["pos_bias_u"], x.dtype)
    w = layers.weight(p["pos_bias_v"], x.dtype)
    f32 = jnp.float32
    ac = jnp.einsum("bihc,bjhc->bhij", q + u, k, preferred_element_type=f32)
    bd = jnp.einsum("bihc,khc->bhik", q + w, r, preferred_element_type=f32)
    scores = (ac + rel_shift(bd)) / math.sqrt(dk)
    if mask is not None:
        keep = mask[:, None, None, :]
        scores = jnp.where(keep, scores, jnp.finfo(f32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if mask is not None:  # ESPnet zeroes masked weights too (matters only for empty rows)
        probs = jnp.where(keep, probs, 0.0)
    probs = attn.dropout(probs.astype(x.dtype), dropout_rate, attn.fold(rng, "probs"))
    o = jnp.einsum("bhij,bjhc->bihc", probs, v).reshape(b, t, d)
    return attn.proj(p, o, lora, rng, "linear_out")
