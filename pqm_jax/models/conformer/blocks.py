"""Building blocks of the ESPnet-style Conformer AED as pure functions over params dicts.

Names mirror ESPnet's modules (`feed_forward_macaron/w_1`, `conv_module/pointwise_conv1`,
`norm_mha`, ...) so that importing a checkpoint is a key mapping. Every linear is a
`{kernel [in, out], bias}` dict passed to `layers.dense`; the 1x1 "pointwise" convolutions of the
convolution module are stored as linears too (so LoRA can target them); the depthwise and
subsampling convolutions go through `layers.weight` (so they may be quantised).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from pqm_jax import layers
from pqm_jax import lora as lora_lib
from pqm_jax.models.common import attention as attn
from pqm_jax.models.conformer import relpos
from pqm_jax.quant.native import barrier

LN_EPS = 1e-12  # ESPnet's LayerNorm
BN_EPS = 1e-5  # torch.nn.BatchNorm1d


def layer_norm(p: dict, x: jax.Array, eps: float = LN_EPS) -> jax.Array:
    """LayerNorm over the last axis with {scale, bias}; statistics in float32, result in x.dtype."""
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + eps)
    h = h * layers.weight(p["scale"], jnp.float32) + layers.weight(p["bias"], jnp.float32)
    return h.astype(x.dtype)


def batch_norm(p: dict, x: jax.Array) -> jax.Array:
    """Inference BatchNorm over the last axis with frozen running statistics.

    p: {scale, bias, mean, var}, each [channels] (torch weight, bias, running_mean, running_var).
    """
    f32 = jnp.float32
    inv = jax.lax.rsqrt(layers.weight(p["var"], f32) + BN_EPS) * layers.weight(p["scale"], f32)
    h = (x.astype(f32) - layers.weight(p["mean"], f32)) * inv + layers.weight(p["bias"], f32)
    return h.astype(x.dtype)


def feed_forward(
    p: dict, x: jax.Array, lora: Any, rng: jax.Array | None, rate: float, activation: Any
) -> jax.Array:
    """ESPnet `PositionwiseFeedForward`: w_2(dropout(activation(w_1(x)))). x: [B, T, d]."""
    h = activation(attn.proj(p, x, lora, rng, "w_1"))
    h = attn.dropout(h, rate, attn.fold(rng, "act"))
    return attn.proj(p, h, lora, rng, "w_2")


def depthwise_conv(p: dict, x: jax.Array) -> jax.Array:
    """'Same'-padded depthwise conv over time. x: [B, T, C]; p: {kernel [K, 1, C], bias [C]}.

    Written as K shifted copies of x times their per-channel weights, summed in float32: one
    elementwise fusion, forward and backward. XLA's CPU backend runs the grouped convolution
    (`feature_group_count=C`) 14x slower at [32, 49, 256] x 15 (15 against 1.1 ms; 50 against
    1.8 ms at [8, 749, 256], a 30 s window) and its input gradient 12x slower."""
    k = layers.weight(p["kernel"], jnp.float32)
    width, frames = k.shape[0], x.shape[1]
    half = (width - 1) // 2
    xp = jnp.pad(x, ((0, 0), (half, width - 1 - half), (0, 0))).astype(jnp.float32)
    y = xp[:, :frames] * k[0, 0]
    for i in range(1, width):
        y = y + xp[:, i : i + frames] * k[i, 0]
    if "bias" in p:
        y = y + layers.weight(p["bias"], jnp.float32)
    return y.astype(x.dtype)


def conv_module(
    p: dict,
    x: jax.Array,
    mask: jax.Array | None,
    lora: Any,
    rng: jax.Array | None,
    *,
    norm: str,
) -> jax.Array:
    """Conformer convolution module: pointwise_conv1 -> GLU -> depthwise_conv -> norm -> Swish ->
    pointwise_conv2.

    Unlike ESPnet (and like WeNet), padded frames are zeroed before the depthwise convolution, so
    valid frames never see padding: a padded batch gives each utterance its unpadded output.

    Args:
      x: [B, T, d]; mask: boolean [B, T] of valid frames or None.
      norm: "batch_norm" (frozen running statistics) or "layer_norm".

    Returns:
      [B, T, d].
    """
    h = attn.proj(p, x, lora, rng, "pointwise_conv1")  # [B, T, 2d]
    a, g = jnp.split(h, 2, axis=-1)
    h = a * jax.nn.sigmoid(g)
    if mask is not None:
        h = jnp.where(mask[..., None], h, 0.0).astype(h.dtype)
    h = depthwise_conv(p["depthwise_conv"], h)
    h = batch_norm(p["norm"], h) if norm == "batch_norm" else layer_norm(p["norm"], h, 1e-5)
    h = jax.nn.silu(h)
    return attn.proj(p, h, lora, rng, "pointwise_conv2")


def conformer_layer(
    p: dict,
    x: jax.Array,
    pos: jax.Array,
    mask: jax.Array | None,
    lora: Any,
    rng: jax.Array | None,
    *,
    heads: int,
    conv_norm: str,
    macaron: bool,
    rate: float,
) -> jax.Array:
    """ESPnet `EncoderLayer` (normalize_before=True, concat_after=False).

    x + 1/2 FFN_macaron -> x + RelMHSA -> x + Conv -> x + 1/2 FFN -> norm_final; Swish FFNs.
    x: [B, T, d]; pos: [2T - 1, d]; mask: [B, T] valid frames. Returns [B, T, d].
    """
    drop = lambda h, name: attn.dropout(h, rate, attn.fold(rng, name))
    sub = lambda name: lora_lib.sub(lora, name)
    ff_scale = 0.5 if macaron else 1.0
    if macaron:
        x = barrier.gradient_barrier(x)
        h = layer_norm(p["norm_ff_macaron"], x)
        rf = attn.fold(rng, "ffm")
        h = feed_forward(p["feed_forward_macaron"], h, sub("feed_forward_macaron"), rf, rate, swish)
        x = x + ff_scale * drop(h, "res_ffm")
    x = barrier.gradient_barrier(x)
    h = layer_norm(p["norm_mha"], x)
    h = relpos.self_attention(
        p["self_attn"],
        h,
        pos,
        mask,
        sub("self_attn"),
        attn.fold(rng, "self_attn"),
        heads=heads,
        dropout_rate=rate,
    )
    x = x + drop(h, "res_mha")
    x = barrier.gradient_barrier(x)
    h = layer_norm(p["norm_conv"], x)
    h = conv_module(
        p["conv_module"], h, mask, sub("conv_module"), attn.fold(rng, "conv"), norm=conv_norm
    )
    x = x + drop(h, "res_conv")
    x = barrier.gradient_barrier(x)
    h = layer_norm(p["norm_ff"], x)
    h = feed_forward(p["feed_forward"], h, sub("feed_forward"), attn.fold(rng, "ff"), rate, swish)
    x = x + ff_scale * drop(h, "res_ff")
    return layer_norm(p["norm_final"], x)


def swish(x: jax.Array) -> jax.Array:
    return jax.nn.silu(x)


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def conv2d(p: dict, x: jax.Array, *, stride: int) -> jax.Array:
    """Valid 2-D convolution, NHWC (time, freq, channels); p: {kernel [kh, kw, in, out], bias}.

    Written as matrix products over the kernel's taps (float32 sums): with few input channels
    (the first convolution: 1) one product of every tap's strided view side by side ([.., 9]
    against [9, d]), otherwise one product per tap, summed (no 9x copy of the input). XLA's CPU
    convolution ran the 1 -> 256 one 4x and the 256 -> 256 one 1.24x slower (stride 2)."""
    k = layers.weight(p["kernel"], x.dtype)
    kh, kw, cin, cout = k.shape
    b, t, f, _ = x.shape
    to, fo = (t - kh) // stride + 1, (f - kw) // stride + 1

    def tap(i: int, j: int) -> jax.Array:
        end = (b, i + stride * (to - 1) + 1, j + stride * (fo - 1) + 1, cin)
        return jax.lax.slice(x, (0, i, j, 0), end, (1, stride, stride, 1))

    def product(a: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.matmul(a, w, preferred_element_type=jnp.float32)

    taps = [(i, j) for i in range(kh) for j in range(kw)]
    if cin * len(taps) <= 64:
        cols = jnp.concatenate([tap(i, j) for i, j in taps], axis=-1)
        y = product(cols, k.reshape(kh * kw * cin, cout))
    else:
        y = sum(product(tap(i, j), k[i, j]) for i, j in taps)
    return (y + layers.weight(p["bias"], jnp.float32)).astype(x.dtype)


def subsampled_length(n: Any) -> Any:
    """Frames of two valid 3x3 stride-2 convolutions over n input frames: ((n-1)//2 - 1)//2.

    These are exactly the output frames whose receptive field lies inside the input; ESPnet's
    mask slicing keeps up to one more (a frame that reads padding), which we drop.
    """
    return ((n - 1) // 2 - 1) // 2


def subsample(p: dict, x: jax.Array, lora: Any, rng: jax.Array | None) -> jax.Array:
    """ESPnet `Conv2dSubsampling` (4x) without its positional encoding.

    x: [B, T, F] features -> conv_0 (1 -> d, 3x3/2) -> ReLU -> conv_2 (d -> d, 3x3/2) -> ReLU ->
    flatten (channel-major, as torch's `view(b, t, c * f)`) -> out_0 linear -> [B, T', d] with
    T' = subsampled_length(T).
    """
    h = jax.nn.relu(conv2d(p["conv_0"], x[..., None], stride=2))
    h = jax.nn.relu(conv2d(p["conv_2"], h, stride=2))  # [B, T', F', d]
    b, t, f, c = h.shape
    h = jnp.swapaxes(h, 2, 3).reshape(b, t, c * f)
    return attn.proj(p, h, lora, rng, "out_0")


def absolute_positions(length: int, d_model: int) -> jax.Array:
    """ESPnet `PositionalEncoding` table [length, d] (sin even, cos odd channels)."""
    pos = jnp.arange(length, dtype=jnp.float32)[:, None]
    div = jnp.exp(jnp.arange(0, d_model, 2, dtype=jnp.float32) * -(math.log(10000.0) / d_model))
    pe = jnp.zeros((length, d_model), jnp.float32)
    pe = pe.at[:, 0::2].set(jnp.sin(pos * div))
    return pe.at[:, 1::2].set(jnp.cos(pos * div))


def attention(
    p: dict,
    x: jax.Array,
    memory: jax.Array,
    mask: jax.Array | None,
    lora: Any,
    rng: jax.Array | None,
    *,
    heads: int,
    rate: float = 0.0,
) -> jax.Array:
    """ESPnet `MultiHeadedAttention`: softmax(q k^T / sqrt(d_k)) v -> linear_out.

    Args:
      x: [B, Tq, d] queries; memory: [B, Tk, d] source of keys and values.
      mask: boolean broadcastable to [B, 1, Tq, Tk] (True = attend), or None.

    Returns:
      [B, Tq, d].
    """
    b, tq, d = x.shape
    q = relpos.split_heads(attn.proj(p, x, lora, rng, "linear_q"), heads)
    k = relpos.split_heads(attn.proj(p, memory, lora, rng, "linear_k"), heads)
    v = relpos.split_heads(attn.proj(p, memory, lora, rng, "linear_v"), heads)
    s = jnp.einsum("bihc,bjhc->bhij", q, k, preferred_element_type=jnp.float32)
    s = s / math.sqrt(d // heads)
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(s, axis=-1)
    if mask is not None:
        probs = jnp.where(mask, probs, 0.0)
    probs = attn.dropout(probs.astype(x.dtype), rate, attn.fold(rng, "probs"))
    o = jnp.einsum("bhij,bjhc->bihc", probs, v).reshape(b, tq, d)
    return attn.proj(p, o, lora, rng, "linear_out")


def decoder_layer(
    p: dict,
    x: jax.Array,
    memory: jax.Array,
    self_mask: jax.Array,
    memory_mask: jax.Array | None,
    lora: Any,
    rng: jax.Array | None,
    *,
    heads: int,
    rate: float,
) -> jax.Array:
    """ESPnet `DecoderLayer` (normalize_before=True): self-attn (norm1), src_attn (norm2),
    ReLU FFN (norm3), each residual. x: [B, U, d]; memory: [B, T, d]. Returns [B, U, d]."""
    drop = lambda h, name: attn.dropout(h, rate, attn.fold(rng, name))
    sub = lambda name: lora_lib.sub(lora, name)
    x = barrier.gradient_barrier(x)
    h = layer_norm(p["norm1"], x)
    h = attention(
        p["self_attn"],
        h,
        h,
        self_mask,
        sub("self_attn"),
        attn.fold(rng, "sa"),
        heads=heads,
        rate=rate,
    )
    x = x + drop(h, "res1")
    x = barrier.gradient_barrier(x)
    h = layer_norm(p["norm2"], x)
    h = attention(
        p["src_attn"],
        h,
        memory,
        memory_mask,
        sub("src_attn"),
        attn.fold(rng, "xa"),
        heads=heads,
        rate=rate,
    )
    x = x + drop(h, "res2")
    x = barrier.gradient_barrier(x)
    h = layer_norm(p["norm3"], x)
    h = feed_forward(p["feed_forward"], h, sub("feed_forward"), attn.fold(rng, "ff"), rate, relu)
    return x + drop(h, "res3")
