"""ESPnet-style Conformer attention encoder-decoder (AED) with a CTC head, as pure functions.

Params are nested dicts that mirror ESPnet's module names (kernels [in, out], float32; any kernel
or the token embedding may be a `QuantizedTensor`):

    normalize (optional): mean [n_mels], std [n_mels]          (ESPnet2 GlobalMVN)
    encoder: embed {conv_0 {kernel [3, 3, 1, d], bias}, conv_2 {kernel [3, 3, d, d], bias},
                    out_0 {kernel [d * F', d], bias}},          F' = ((n_mels - 1)//2 - 1)//2
             encoders_{i} {feed_forward_macaron {w_1, w_2}, norm_ff_macaron,
                           self_attn {linear_q, linear_k, linear_v, linear_out, linear_pos,
                                      pos_bias_u [h, d_k], pos_bias_v [h, d_k]}, norm_mha,
                           conv_module {pointwise_conv1 {kernel [d, 2d], bias},
                                        depthwise_conv {kernel [K, 1, d], bias},
                                        norm {scale, bias[, mean, var]},
                                        pointwise_conv2 {kernel [d, d], bias}}, norm_conv,
                           feed_forward {w_1, w_2}, norm_ff, norm_final}
             after_norm {scale, bias}
    decoder: embed [vocab, d], decoders_{i} {self_attn, src_attn {linear_q, linear_k, linear_v,
             linear_out}, feed_forward {w_1, w_2}, norm1, norm2, norm3}, after_norm,
             output_layer {kernel [d, vocab], bias}
    ctc: ctc_lo {kernel [d, vocab], bias}

A LoRA tree mirrors that nesting down to the module (`lora["encoder"]["encoders_0"]["self_attn"]
["linear_q"]`). Numerics follow ESPnet (normalize_before, LayerNorm eps 1e-12, Swish, rel_pos_type
"latest", x * sqrt(d) before the positional encodings), with one deliberate difference: padded
frames never reach valid ones (see `conformer_blocks.conv_module`, `subsampled_length`).
Token conventions: blank = 0, sos = eos = vocab_size - 1.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from pqm_jax import layers
from pqm_jax import lora as lora_lib
from pqm_jax.models.common import attention as attn
from pqm_jax.models.conformer import blocks, ctc, relpos

# LoRA targets (regular expressions over module paths, for `lora.LoraConfig(targets=...)`).
ATTENTION_TARGETS = (r"(self_attn|src_attn)/linear_(q|k|v|out)$",)
CONV_TARGETS = (r"conv_module/pointwise_conv[12]$",)
# Quantisation targets (for `quant.tree.quantize_tree(params, match_any(QUANT_TARGETS))`): every
# linear and convolution kernel and the token embedding.
QUANT_TARGETS = (r"/kernel$", r"^decoder/embed$")


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """Architecture hyper-parameters (hashable: usable as a static jit argument).

    Defaults are ESPnet's LibriSpeech-100 Conformer recipe sizes except the vocabulary.
    """

    vocab_size: int
    n_mels: int = 80
    d_model: int = 256
    encoder_layers: int = 12
    encoder_heads: int = 4
    encoder_ffn: int = 1024
    kernel_size: int = 31
    conv_norm: str = "batch_norm"  # or "layer_norm" (trainable from scratch without batch stats)
    macaron: bool = True
    decoder_layers: int = 6
    decoder_heads: int = 4
    decoder_ffn: int = 2048

    def __post_init__(self):
        if self.conv_norm not in ("batch_norm", "layer_norm"):
            raise ValueError(f"conv_norm must be batch_norm or layer_norm, got {self.conv_norm!r}")
        if self.d_model % self.encoder_heads or self.d_model % self.decoder_heads:
            raise ValueError("d_model must be divisible by the number of heads")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.n_mels < 7:
            raise ValueError(f"n_mels must be >= 7 for the 4x subsampling, got {self.n_mels}")

    @property
    def blank(self) -> int:
        return 0

    @property
    def sos(self) -> int:
        return self.vocab_size - 1

    @property
    def eos(self) -> int:
        return self.vocab_size - 1

    @property
    def sub_freq(self) -> int:
        """Frequency bins after the subsampling convolutions (F')."""
        return blocks.subsampled_length(self.n_mels)


def encode(
    params: dict,
    feats: jax.Array,
    feat_lens: jax.Array,
    *,
    config: ConformerConfig,
    lora: Any = None,
    dtype: Any = jnp.float32,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Conformer encoder.

    Args:
      params: the full params tree (uses params["encoder"] and params.get("normalize")).
      feats: [B, T, n_mels] features (T >= 7), padded after feat_lens[b].
      feat_lens: [B] int valid frames.
      config: architecture.
      lora: optional adapter tree for the full model (uses lora["encoder"]).
      dtype: compute dtype (float32 or bfloat16).
      dropout_rng: key for LoRA and backbone dropout; None (inference) turns dropout off.
      dropout_rate: backbone dropout (residuals, FFN activations, attention weights, input).

    Returns:
      (enc [B, T', d] in dtype, enc_lens [B] int32) with T' = ((T - 1)//2 - 1)//2; frames at or
      after enc_lens[b] are padding (their values are unspecified).
    """
    if feats.ndim != 3 or feats.shape[-1] != config.n_mels or feats.shape[1] < 7:
        raise ValueError(
            f"encode() expects feats [batch, time >= 7, {config.n_mels}], got {tuple(feats.shape)}"
        )
    p, lo, rng = params["encoder"], lora_lib.sub(lora, "encoder"), dropout_rng
    x = jnp.asarray(feats, dtype)
    if "normalize" in params:
        norm = params["normalize"]
        x = (x - layers.weight(norm["mean"], dtype)) / layers.weight(norm["std"], dtype)
    x = blocks.subsample(p["embed"], x, lora_lib.sub(lo, "embed"), attn.fold(rng, "embed"))
    x = x * jnp.asarray(math.sqrt(config.d_model), x.dtype)
    x = attn.dropout(x, dropout_rate, attn.fold(rng, "embed_drop"))
    t = x.shape[1]
    lens = jnp.maximum(blocks.subsampled_length(jnp.asarray(feat_lens, jnp.int32)), 0)
    mask = ctc.length_mask(lens, t)
    pos = jnp.asarray(relpos.table(t, config.d_model))
    for i in range(config.encoder_layers):
        name = f"encoders_{i}"
        x = blocks.conformer_layer(
            p[name],
            x,
            pos,
            mask,
            lora_lib.sub(lo, name),
            attn.fold(rng, "encoder", i),
            heads=config.encoder_heads,
            conv_norm=config.conv_norm,
            macaron=config.macaron,
            rate=dropout_rate,
        )
    return blocks.layer_norm(p["after_norm"], x), lens


def decode(
    params: dict,
    tokens: jax.Array,
    enc: jax.Array,
    enc_mask: jax.Array | None,
    *,
    config: ConformerConfig,
    lora: Any = None,
    dtype: Any = jnp.float32,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
) -> jax.Array:
    """Teacher-forced Transformer decoder.

    Args:
      tokens: [B, U] int ids starting with sos (pad with eos: padding only follows valid tokens).
      enc: [B, T', d] encoder output; enc_mask: boolean [B, T'] valid frames, or None.

    Returns:
      logits [B, U, vocab] (float32): position u predicts token u + 1.
    """
    p, lo, rng = params["decoder"], lora_lib.sub(lora, "decoder"), dropout_rng
    u, d = tokens.shape[1], config.d_model
    x = layers.embed(tokens, p["embed"], dtype) * jnp.asarray(math.sqrt(d), dtype)
    x = x + blocks.absolute_positions(u, d).astype(dtype)
    x = attn.dropout(x, dropout_rate, attn.fold(rng, "embed_drop"))
    self_mask = jnp.tril(jnp.ones((u, u), bool))[None, None]
    memory_mask = None if enc_mask is None else enc_mask[:, None, None, :]
    memory = enc.astype(dtype)
    for i in range(config.decoder_layers):
        name = f"decoders_{i}"
        x = blocks.decoder_layer(
            p[name],
            x,
            memory,
            self_mask,
            memory_mask,
            lora_lib.sub(lo, name),
            attn.fold(rng, "decoder", i),
            heads=config.decoder_heads,
            rate=dropout_rate,
        )
    x = blocks.layer_norm(p["after_norm"], x)
    out = attn.proj(p, x, lora_lib.sub(lo, "output_layer"), rng, "output_layer")
    return out.astype(jnp.float32)


def teacher_forcing(
    labels: jax.Array, label_lens: jax.Array, *, config: ConformerConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ESPnet `add_sos_eos`: labels [B, U] -> (inputs [B, U+1] = sos y (eos-padded),
    targets [B, U+1] = y eos, valid [B, U+1])."""
    b, u = labels.shape
    valid_y = ctc.length_mask(label_lens, u)
    y = jnp.where(valid_y, labels, config.eos)
    inputs = jnp.concatenate([jnp.full((b, 1), config.sos, y.dtype), y], axis=1)
    targets = jnp.concatenate([y, jnp.full((b, 1), config.eos, y.dtype)], axis=1)
    valid = ctc.length_mask(label_lens + 1, u + 1)
    return inputs, targets, valid


def loss(
    params: dict,
    feats: jax.Array,
    feat_lens: jax.Array,
    labels: jax.Array,
    label_lens: jax.Array,
    *,
    config: ConformerConfig,
    ctc_weight: float = 0.3,
    smoothing: float = 0.1,
    lora: Any = None,
    dtype: Any = jnp.float32,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Joint CTC-attention loss: ctc_weight * CTC + (1 - ctc_weight) * label-smoothed attention.

    Both terms are summed over each utterance and averaged over the batch (ESPnet's reduction).

    Args:
      feats: [B, T, n_mels]; feat_lens: [B].
      labels: [B, U] int token ids in [1, vocab - 2] (no sos/eos/blank), padded anyhow;
        label_lens: [B].

    Returns:
      (scalar loss, {"ctc", "att", "acc"} scalars).
    """
    enc, enc_lens = encode(
        params,
        feats,
        feat_lens,
        config=config,
        lora=lora,
        dtype=dtype,
        dropout_rng=attn.fold(dropout_rng, "enc"),
        dropout_rate=dropout_rate,
    )
    enc_mask = ctc.length_mask(enc_lens, enc.shape[1])
    inputs, targets, valid = teacher_forcing(labels, label_lens, config=config)
    zero = jnp.zeros((), jnp.float32)
    aux = {"ctc": zero, "att": zero, "acc": zero}
    total = zero
    if ctc_weight > 0.0:
        rng = attn.fold(dropout_rng, "ctc")
        cl = ctc.logits(params, enc, lora=lora, rng=rng)
        aux["ctc"] = ctc.ctc_loss(cl, enc_lens, labels, label_lens, blank=config.blank).mean()
        total = total + ctc_weight * aux["ctc"]
    if ctc_weight < 1.0:
        logits = decode(
            params,
            inputs,
            enc,
            enc_mask,
            config=config,
            lora=lora,
            dtype=dtype,
            dropout_rng=attn.fold(dropout_rng, "dec"),
            dropout_rate=dropout_rate,
        )
        att = ctc.label_smoothing_loss(logits, targets, valid, smoothing=smoothing)
        aux["att"] = att.mean()
        aux["acc"] = ctc.accuracy(logits, targets, valid)
        total = total + (1.0 - ctc_weight) * aux["att"]
    return total, aux


def init(config: ConformerConfig, *, key: jax.Array) -> dict:
    """Random params in the layout above: Xavier-uniform kernels (ESPnet2's default init), zero
    biases, unit norms, N(0, 1) token embedding, BatchNorm statistics mean 0 / var 1."""
    keys = iter(jax.random.split(key, 4096))
    d, c = config.d_model, config

    def xavier(shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(next(keys), shape, jnp.float32, -bound, bound)

    def zeros(n: int) -> jax.Array:
        return jnp.zeros((n,), jnp.float32)

    def linear(d_in: int, d_out: int, bias: bool = True) -> dict:
        p = {"kernel": xavier((d_in, d_out), d_in, d_out)}
        return p | {"bias": zeros(d_out)} if bias else p

    def norm(n: int = d) -> dict:
        return {"scale": jnp.ones((n,), jnp.float32), "bias": zeros(n)}

    def mha() -> dict:
        return {f"linear_{n}": linear(d, d) for n in ("q", "k", "v", "out")}

    def ffn(hidden: int) -> dict:
        return {"w_1": linear(d, hidden), "w_2": linear(hidden, d)}

    def conv_module() -> dict:
        k = c.kernel_size
        nm = norm()
        if c.conv_norm == "batch_norm":
            nm |= {"mean": zeros(d), "var": jnp.ones((d,), jnp.float32)}
        return {
            "pointwise_conv1": linear(d, 2 * d),
            "depthwise_conv": {"kernel": xavier((k, 1, d), k, d * k), "bias": zeros(d)},
            "norm": nm,
            "pointwise_conv2": linear(d, d),
        }

    def encoder_layer() -> dict:
        dk, h = d // c.encoder_heads, c.encoder_heads
        attn_p = mha() | {"linear_pos": linear(d, d, bias=False)}
        attn_p |= {"pos_bias_u": xavier((h, dk), dk, h), "pos_bias_v": xavier((h, dk), dk, h)}
        p = {"self_attn": attn_p, "norm_mha": norm(), "conv_module": conv_module()}
        p |= {"norm_conv": norm(), "feed_forward": ffn(c.encoder_ffn), "norm_ff": norm()}
        p |= {"norm_final": norm()}
        if c.macaron:
            p |= {"feed_forward_macaron": ffn(c.encoder_ffn), "norm_ff_macaron": norm()}
        return p

    def decoder_layer() -> dict:
        p = {"self_attn": mha(), "src_attn": mha(), "feed_forward": ffn(c.decoder_ffn)}
        return p | {"norm1": norm(), "norm2": norm(), "norm3": norm()}

    embed = {
        "conv_0": {"kernel": xavier((3, 3, 1, d), 9, 9 * d), "bias": zeros(d)},
        "conv_2": {"kernel": xavier((3, 3, d, d), 9 * d, 9 * d), "bias": zeros(d)},
        "out_0": linear(d * c.sub_freq, d),
    }
    encoder = {"embed": embed, "after_norm": norm()}
    encoder |= {f"encoders_{i}": encoder_layer() for i in range(c.encoder_layers)}
    decoder = {
        "embed": jax.random.normal(next(keys), (c.vocab_size, d), jnp.float32),
        "after_norm": norm(),
        "output_layer": linear(d, c.vocab_size),
    }
    decoder |= {f"decoders_{i}": decoder_layer() for i in range(c.decoder_layers)}
    return {"encoder": encoder, "decoder": decoder, "ctc": {"ctc_lo": linear(d, c.vocab_size)}}
