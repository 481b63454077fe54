"""Whisper as pure functions over a params pytree: encoder, teacher-forced decoder, cached step.

Params are nested dicts named as Hugging Face names the modules (kernels [in, out], float32; any
kernel or the token embedding may be a `QuantizedTensor`):

    encoder: conv1 {kernel [3, n_mels, d], bias}, conv2 {kernel [3, d, d], bias},
             embed_positions [1500, d], layers_{i} {...}, layer_norm {scale, bias}
    decoder: embed_tokens [vocab, d] (tied output projection), embed_positions [448, d],
             layers_{i} {...}, layer_norm {scale, bias}
    layer:   self_attn_layer_norm, self_attn {q_proj, k_proj (no bias), v_proj, out_proj},
             [decoder: encoder_attn_layer_norm, encoder_attn {q_proj, k_proj, v_proj, out_proj}],
             final_layer_norm, fc1, fc2

A LoRA tree mirrors that nesting down to the module (`lora["decoder"]["layers_0"]["self_attn"]
["q_proj"]` is a `LoraWeights`); its arrays may carry a leading batch axis (one adapter per
utterance). Numerics follow HF/openai: pre-norm blocks, LayerNorm eps 1e-5, exact GELU, queries
scaled by head_dim**-0.5 before the dot product. Each block's input passes
`barrier.gradient_barrier` (on CPU the residual stream's gradient is then written once per block
instead of re-added in every consumer; values unchanged).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax import layers
from pqm_jax import lora as lora_lib
from pqm_jax.models.common import attention as attn
from pqm_jax.quant.native import barrier


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Architecture hyper-parameters (hashable: usable as a static jit argument)."""

    n_mels: int
    vocab_size: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    max_source_positions: int = 1500
    max_target_positions: int = 448

    # name -> (n_mels, d_model, layers, heads, multilingual vocab); ".en" models have vocab 51864.
    _PRESETS: ClassVar[dict[str, tuple[int, int, int, int, int]]] = {
        "tiny": (80, 384, 4, 6, 51865),
        "base": (80, 512, 6, 8, 51865),
        "small": (80, 768, 12, 12, 51865),
        "medium": (80, 1024, 24, 16, 51865),
        "large-v2": (80, 1280, 32, 20, 51865),
        "large-v3": (128, 1280, 32, 20, 51866),
    }

    @classmethod
    def preset(cls, name: str) -> WhisperConfig:
        """The configuration of a released checkpoint: tiny, tiny.en, base, ..., large-v3."""
        english = name.endswith(".en")
        key = name.removesuffix(".en")
        if key not in cls._PRESETS or (english and key.startswith("large")):
            names = sorted([*cls._PRESETS, *(f"{k}.en" for k in cls._PRESETS if "large" not in k)])
            raise ValueError(f"unknown Whisper preset {name!r}; known: {', '.join(names)}")
        n_mels, d, n_layers, heads, vocab = cls._PRESETS[key]
        return cls(
            n_mels=n_mels,
            vocab_size=51864 if english else vocab,
            d_model=d,
            encoder_layers=n_layers,
            decoder_layers=n_layers,
            encoder_heads=heads,
            decoder_heads=heads,
            encoder_ffn=4 * d,
            decoder_ffn=4 * d,
        )

    @property
    def n_frames(self) -> int:
        """Mel frames of one 30 s window (two per encoder position)."""
        return 2 * self.max_source_positions


@struct.dataclass
class CrossKV:
    """Cross-attention keys/values of every decoder layer, computed once per utterance.

    k, v: tuples with one [B, heads, 1500, head_dim] array per decoder layer (head-major: no
    transposes per step). One array per layer, not one stacked array: XLA's CPU backend copies a
    layer's slice out of a stacked array at every step of a decoding loop (8 copies of 2.3 MB a
    token for tiny.en at one row), where separate arrays are read in place.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


@struct.dataclass
class KVCache:
    """Preallocated self-attention cache.

    k, v: tuples with one [B * heads, max_len, head_dim] array per decoder layer (row b's heads
    at b * heads ...); index: int32 [] = positions already written (all rows share it: same
    prompt length). One array per layer, as `CrossKV`, and batch and heads in one axis: with a
    [B, heads, ...] layout, a batch of one row has a unit axis that XLA's CPU backend drops for
    the attention product, and it then copies the whole cache (several times) at every step
    instead of updating it in place.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    index: jax.Array
    heads: int = struct.field(pytree_node=False)

    def map_rows(self, fn) -> KVCache:
        """The cache with `fn` applied to every layer's keys and values as [B, heads, ...] arrays
        (reordering, repeating or gathering rows)."""

        def per_row(x):
            y = fn(x.reshape(-1, self.heads, *x.shape[1:]))
            return y.reshape(-1, *x.shape[1:])

        return self.replace(k=tuple(map(per_row, self.k)), v=tuple(map(per_row, self.v)))


def _conv(p: dict, x: jax.Array, *, stride: int) -> jax.Array:
    y = layers.conv1d(x, p["kernel"], bias=p.get("bias"), stride=stride, padding=1)
    return jax.nn.gelu(y, approximate=False)


def _positions(table: Any, start: Any, length: int, dtype: Any) -> jax.Array:
    """Rows start..start+length of a [max, d] position table -> [length, d]."""
    return jax.lax.dynamic_slice_in_dim(layers.weight(table, dtype), start, length, axis=0)


def encode(
    params: dict,
    mel: jax.Array,
    *,
    config: WhisperConfig,
    lora: Any = None,
    dtype: Any = jnp.float32,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
) -> jax.Array:
    """Audio encoder.

    Args:
      params: the full params tree (uses params["encoder"]).
      mel: [B, n_mels, 3000] log-mel features (channels first, as HF/openai and `log_mel`).
      config: architecture.
      lora: optional adapter tree for the full model (uses lora["encoder"]).
      dtype: compute dtype (float32, or bfloat16).
      dropout_rng: key for LoRA dropout and `dropout_rate`; None (inference) turns dropout off.
      dropout_rate: residual/activation dropout of the backbone (Whisper checkpoints use 0).

    Returns:
      [B, 1500, d_model] in `dtype`.
    """
    if mel.ndim != 3 or mel.shape[1:] != (config.n_mels, config.n_frames):
        raise ValueError(
            f"encode() expects mel [batch, {config.n_mels}, {config.n_frames}] (a padded 30 s "
            f"window), got {tuple(mel.shape)}"
        )
    p, lo = params["encoder"], lora_lib.sub(lora, "encoder")
    x = jnp.swapaxes(jnp.asarray(mel, dtype), 1, 2)  # channels last: [B, 3000, n_mels]
    x = _conv(p["conv1"], x, stride=1)
    x = _conv(p["conv2"], x, stride=2)
    x = x + _positions(p["embed_positions"], 0, x.shape[1], dtype)
    x = attn.dropout(x, dropout_rate, attn.fold(dropout_rng, "encoder", "embed"))
    heads = config.encoder_heads
    for i in range(config.encoder_layers):
        name = f"layers_{i}"
        lp, ll, rng = p[name], lora_lib.sub(lo, name), attn.fold(dropout_rng, "encoder", i)
        x = barrier.gradient_barrier(x)
        h = attn.layer_norm(lp["self_attn_layer_norm"], x)
        a, la = lp["self_attn"], lora_lib.sub(ll, "self_attn")
        ra = attn.fold(rng, "self_attn")
        k, v = attn.keys_values(a, h, la, ra, heads=heads)
        o = attn.attend(attn.query(a, h, la, ra, heads=heads), k, v, None)
        x = x + attn.dropout(attn.output(a, o, la, ra), dropout_rate, attn.fold(rng, "res1"))
        x = barrier.gradient_barrier(x)
        h = attn.layer_norm(lp["final_layer_norm"], x)
        h = attn.mlp(lp, h, ll, rng, dropout_rate)
        x = x + attn.dropout(h, dropout_rate, attn.fold(rng, "res2"))
    return attn.layer_norm(p["layer_norm"], x)


def cross_kv(
    params: dict,
    encoder_out: jax.Array,
    *,
    config: WhisperConfig,
    lora: Any = None,
    dropout_rng: jax.Array | None = None,
) -> CrossKV:
    """Keys/values of every decoder cross-attention layer from `encoder_out` [B, S, d]."""
    ks, vs = [], []
    for i in range(config.decoder_layers):
        name = f"layers_{i}"
        a = params["decoder"][name]["encoder_attn"]
        la = lora_lib.sub(lora, "decoder", name, "encoder_attn")
        rng = attn.fold(dropout_rng, "decoder", i, "encoder_attn")
        k, v = attn.keys_values(a, encoder_out, la, rng, heads=config.decoder_heads)
        ks.append(k)
        vs.append(v)
    return CrossKV(k=tuple(ks), v=tuple(vs))


def init_cache(config: WhisperConfig, batch: int, max_len: int, dtype: Any = jnp.float32):
    """An empty `KVCache` for `batch` rows and `max_len` <= max_target_positions positions."""
    if max_len > config.max_target_positions:
        raise ValueError(f"max_len {max_len} > max_target_positions {config.max_target_positions}")
    heads = config.decoder_heads
    shape = (batch * heads, max_len, config.d_model // heads)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.decoder_layers))
    return KVCache(k=zeros, v=zeros, index=jnp.zeros((), jnp.int32), heads=heads)


def _cross_attend(q: jax.Array, k: jax.Array, v: jax.Array, native: bool) -> jax.Array:
    """Cross-attention; q [B * n, T, d] may hold n hypotheses (beams) per row of k, v [B, H, S,
    hd], grouped by row (hypothesis j of row b at b * n + j): they share keys without copies."""
    rows, t, d = q.shape
    if rows == k.shape[0]:
        return attn.attend(q, k, v, None, native=native)
    o = attn.attend(q.reshape(k.shape[0], -1, d), k, v, None, native=native)
    return o.reshape(rows, t, d)


def _decoder(
    params: dict,
    tokens: jax.Array,
    cross: CrossKV,
    cache: KVCache | None,
    *,
    config: WhisperConfig,
    lora: Any,
    dtype: Any,
    dropout_rng: jax.Array | None,
    dropout_rate: float,
    collect: list | None = None,
    native: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """Decoder stack on `tokens` [B, T]; with a cache, they sit at positions cache.index + t.
    `collect` (a list) receives each layer's cross-attention weights [B, H, T, S]. `native`: a
    decoding step's attention and logits by the float32 CPU kernel (see `decode_step`)."""
    p, lo = params["decoder"], lora_lib.sub(lora, "decoder")
    t = tokens.shape[1]
    start = jnp.zeros((), jnp.int32) if cache is None else cache.index
    x = layers.embed(tokens, p["embed_tokens"], dtype) + _positions(
        p["embed_positions"], start, t, dtype
    )
    x = attn.dropout(x, dropout_rate, attn.fold(dropout_rng, "decoder", "embed"))
    k_len = t if cache is None else cache.k[0].shape[1]
    mask = attn.causal_mask(t, k_len, start)
    heads = config.decoder_heads
    for i in range(config.decoder_layers):
        name = f"layers_{i}"
        lp, ll, rng = p[name], lora_lib.sub(lo, name), attn.fold(dropout_rng, "decoder", i)
        # Self-attention (causal); new keys/values go into the cache when there is one.
        x = barrier.gradient_barrier(x)
        h = attn.layer_norm(lp["self_attn_layer_norm"], x)
        a, la, ra = lp["self_attn"], lora_lib.sub(ll, "self_attn"), attn.fold(rng, "self_attn")
        q = attn.query(a, h, la, ra, heads=heads)
        k, v = attn.keys_values(a, h, la, ra, heads=heads)
        if cache is None:
            o = attn.attend(q, k, v, mask)
        else:
            at, kept = (0, cache.index, 0), cache.k[i].dtype
            ck = jax.lax.dynamic_update_slice(
                cache.k[i], k.reshape(-1, *k.shape[2:]).astype(kept), at
            )
            cv = jax.lax.dynamic_update_slice(
                cache.v[i], v.reshape(-1, *v.shape[2:]).astype(kept), at
            )
            ks, vs = list(cache.k), list(cache.v)
            ks[i], vs[i] = ck, cv
            cache = cache.replace(k=tuple(ks), v=tuple(vs))
            o = attn.attend_flat(
                q, ck.astype(dtype), cv.astype(dtype), mask[0], heads=heads, native=native
            )
        x = x + attn.dropout(attn.output(a, o, la, ra), dropout_rate, attn.fold(rng, "res1"))
        # Cross-attention over the precomputed encoder keys/values.
        x = barrier.gradient_barrier(x)
        h = attn.layer_norm(lp["encoder_attn_layer_norm"], x)
        a, la, ra = lp["encoder_attn"], lora_lib.sub(ll, "encoder_attn"), attn.fold(rng, "x")
        q = attn.query(a, h, la, ra, heads=heads)
        if collect is not None:
            s = jnp.einsum("bhqc,bhkc->bhqk", attn.to_heads(q, heads), cross.k[i].astype(dtype))
            collect.append(jax.nn.softmax(s.astype(jnp.float32), axis=-1))
        o = _cross_attend(q, cross.k[i].astype(dtype), cross.v[i].astype(dtype), native)
        x = x + attn.dropout(attn.output(a, o, la, ra), dropout_rate, attn.fold(rng, "res2"))
        # MLP.
        x = barrier.gradient_barrier(x)
        h = attn.mlp(lp, attn.layer_norm(lp["final_layer_norm"], x), ll, rng, dropout_rate)
        x = x + attn.dropout(h, dropout_rate, attn.fold(rng, "res3"))
    x = attn.layer_norm(p["layer_norm"], x)
    logits = layers.attend(x, p["embed_tokens"], native=native).astype(jnp.float32)
    if cache is not None:
        cache = cache.replace(index=cache.index + t)
    return logits, cache


def decode(
    params: dict,
    tokens: jax.Array,
    encoder_out: jax.Array,
    *,
    config: WhisperConfig,
    lora: Any = None,
    dtype: Any = jnp.float32,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
) -> jax.Array:
    """Teacher-forced decoder (training / scoring).

    Args:
      tokens: [B, T] int token ids (prompt + text), T <= max_target_positions.
      encoder_out: [B, 1500, d] from `encode`.

    Returns:
      logits [B, T, vocab] (float32): position t predicts token t + 1.
    """
    if tokens.shape[1] > config.max_target_positions:
        raise ValueError(f"{tokens.shape[1]} tokens > {config.max_target_positions} positions")
    cross = cross_kv(
        params, encoder_out.astype(dtype), config=config, lora=lora, dropout_rng=dropout_rng
    )
    logits, _ = _decoder(
        params,
        tokens,
        cross,
        None,
        config=config,
        lora=lora,
        dtype=dtype,
        dropout_rng=dropout_rng,
        dropout_rate=dropout_rate,
    )
    return logits


def cross_attention(
    params: dict,
    tokens: jax.Array,
    encoder_out: jax.Array,
    *,
    config: WhisperConfig,
    lora: Any = None,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Teacher-forced cross-attention weights of every decoder layer and head (for word
    timestamps): tokens [B, T], encoder_out [B, S, d] -> [layers, B, heads, T, S] float32."""
    cross = cross_kv(params, encoder_out.astype(dtype), config=config, lora=lora)
    found: list = []
    _decoder(
        params,
        tokens,
        cross,
        None,
        config=config,
        lora=lora,
        dtype=dtype,
        dropout_rng=None,
        dropout_rate=0.0,
        collect=found,
    )
    return jnp.stack(found)


def decode_step(
    params: dict,
    tokens: jax.Array,
    cache: KVCache,
    cross: CrossKV,
    *,
    config: WhisperConfig,
    lora: Any = None,
    dtype: Any = jnp.float32,
    native: bool = False,
) -> tuple[jax.Array, KVCache]:
    """Incremental decoding: `tokens` [N, T] (T = prompt length for the prefill, then 1) at
    positions cache.index.. of every row; returns (logits [N, T, vocab] float32, updated cache).

    N is the batch B of `cross` or a multiple B * n (n hypotheses per utterance, grouped by
    utterance, as in beam search); `cache` and any per-example LoRA bank then have N rows.
    `native`: multiply the step's few rows by the cached keys and values and the float32 tied
    embedding with the CPU kernel of `quant.native.rows` where it takes them (it reads each
    matrix once; XLA's dot copies it first). Close to the XLA products, not bit-equal; no
    derivatives.
    """
    return _decoder(
        params,
        tokens,
        cross,
        cache,
        config=config,
        lora=lora,
        dtype=dtype,
        dropout_rng=None,
        dropout_rate=0.0,
        native=native,
    )


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's fixed encoder position table [length, channels] (sin half, then cos half)."""
    inc = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def init(config: WhisperConfig, *, key: jax.Array, std: float = 0.02) -> dict:
    """Random params in the layout above (normal(std) kernels, zero biases, unit LN scales)."""
    d = config.d_model
    keys = iter(jax.random.split(key, 1024))

    def dense_p(d_in: int, d_out: int, bias: bool = True) -> dict:
        p = {"kernel": std * jax.random.normal(next(keys), (d_in, d_out), jnp.float32)}
        if bias:
            p["bias"] = jnp.zeros((d_out,), jnp.float32)
        return p

    def ln() -> dict:
        return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}

    def att() -> dict:
        return {
            "q_proj": dense_p(d, d),
            "k_proj": dense_p(d, d, bias=False),
            "v_proj": dense_p(d, d),
            "out_proj": dense_p(d, d),
        }

    def block(ffn: int, cross: bool) -> dict:
        p = {"self_attn_layer_norm": ln(), "self_attn": att(), "final_layer_norm": ln()}
        p |= {"fc1": dense_p(d, ffn), "fc2": dense_p(ffn, d)}
        if cross:
            p |= {"encoder_attn_layer_norm": ln(), "encoder_attn": att()}
        return p

    def conv(d_in: int) -> dict:
        k = std * jax.random.normal(next(keys), (3, d_in, d), jnp.float32)
        return {"kernel": k, "bias": jnp.zeros((d,), jnp.float32)}

    encoder = {
        "conv1": conv(config.n_mels),
        "conv2": conv(d),
        "embed_positions": jnp.asarray(sinusoids(config.max_source_positions, d)),
        "layer_norm": ln(),
    }
    encoder |= {
        f"layers_{i}": block(config.encoder_ffn, False) for i in range(config.encoder_layers)
    }
    shape = (config.vocab_size, d)
    decoder = {
        "embed_tokens": std * jax.random.normal(next(keys), shape, jnp.float32),
        "embed_positions": std * jax.random.normal(next(keys), (config.max_target_positions, d)),
        "layer_norm": ln(),
    }
    decoder |= {
        f"layers_{i}": block(config.decoder_ffn, True) for i in range(config.decoder_layers)
    }
    return {"encoder": encoder, "decoder": decoder}
