"""CTC head and losses of the Conformer AED (ESPnet conventions).

The head is ESPnet's `ctc.ctc_lo` linear on the encoder output; blank is token 0. Losses follow
ESPnet's reductions: a sum over the batch divided by the batch size (per-utterance mean), and the
attention loss is ESPnet's `LabelSmoothingLoss` (KL divergence to the smoothed target, which
equals cross-entropy when smoothing is 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from pqm_jax import lora as lora_lib
from pqm_jax.models.common import attention as attn


def logits(params: dict, enc: jax.Array, *, lora: Any = None, rng: jax.Array | None = None):
    """CTC logits [B, T', vocab] (float32) from encoder output [B, T', d] (uses params["ctc"])."""
    out = attn.proj(params["ctc"], enc, lora_lib.sub(lora, "ctc"), rng, "ctc_lo")
    return out.astype(jnp.float32)


def length_mask(lengths: jax.Array, size: int) -> jax.Array:
    """Boolean [B, size]: position t < lengths[b]."""
    return jnp.arange(size)[None, :] < lengths[:, None]


def ctc_loss(
    ctc_logits: jax.Array,
    enc_lens: jax.Array,
    labels: jax.Array,
    label_lens: jax.Array,
    *,
    blank: int = 0,
) -> jax.Array:
    """Per-utterance CTC negative log-likelihood [B].

    Args:
      ctc_logits: [B, T', vocab]; enc_lens: [B] valid frames.
      labels: [B, U] int token ids (no blanks), padded anyhow; label_lens: [B].
    """
    t, u = ctc_logits.shape[1], labels.shape[1]
    logit_pad = 1.0 - length_mask(enc_lens, t).astype(jnp.float32)
    label_pad = 1.0 - length_mask(label_lens, u).astype(jnp.float32)
    safe = jnp.where(label_pad > 0, 0, labels)
    return optax.ctc_loss(ctc_logits, logit_pad, safe, label_pad, blank_id=blank)


def label_smoothing_loss(
    logits_: jax.Array, targets: jax.Array, valid: jax.Array, *, smoothing: float = 0.0
) -> jax.Array:
    """ESPnet `LabelSmoothingLoss` summed per utterance [B].

    The target puts 1 - smoothing on the true token and smoothing / (vocab - 1) on every other;
    the loss is KL(target || softmax(logits)) over valid positions.

    Args:
      logits_: [B, U, vocab]; targets: [B, U] int; valid: [B, U] boolean.
    """
    vocab = logits_.shape[-1]
    logp = jax.nn.log_softmax(logits_.astype(jnp.float32), axis=-1)
    confidence = 1.0 - smoothing
    off = smoothing / (vocab - 1)
    onehot = jax.nn.one_hot(jnp.where(valid, targets, 0), vocab, dtype=jnp.float32)
    dist = onehot * confidence + (1.0 - onehot) * off
    kl = jax.scipy.special.xlogy(dist, dist) - dist * logp
    return jnp.where(valid[..., None], kl, 0.0).sum((1, 2))


def accuracy(logits_: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Token accuracy of argmax predictions over valid positions (a scalar)."""
    hit = (jnp.argmax(logits_, -1) == targets) & valid
    return hit.sum() / jnp.maximum(valid.sum(), 1)
