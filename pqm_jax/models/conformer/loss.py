"""The Conformer AED's training loss: the common batch layout -> its joint CTC/attention loss.

The batch is the one every model gets (see `pqm_jax.train.steps`): mel [B, n_mels, frames] of a fixed audio
window, and character ids from `CharTokenizer` (prompt `<sos/eos>`, so `inputs` = sos + y,
`targets` = y + eos, weights 1 on y and eos). Every frame of the window is valid (the padding
is the log-mel of silence, which the model learns to read as silence), so the encoder sees one
length; the CTC labels are the weighted targets minus the final eos. Rows with no weighted
target (padding rows of an evaluation batch) contribute nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pqm_jax.models.common import attention as attn
from pqm_jax.models.conformer import ctc
from pqm_jax.models.conformer import inputs as conformer_inputs
from pqm_jax.models.conformer import model as conformer

# SpecAugment widths for short fixed windows (ESPnet LibriSpeech: 2 x 27 bins, 2 x 5% frames).
FREQ_WIDTH, TIME_WIDTH, TIME_RATIO = 27, 40, 0.05


def features(mel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """mel [B, n_mels, frames] -> (feats [B, frames, n_mels], lengths [B] = frames)."""
    feats = jnp.swapaxes(mel, 1, 2)
    return feats, jnp.full((feats.shape[0],), feats.shape[1], jnp.int32)


def token_stats(
    params: dict,
    lora: Any,
    batch: dict,
    *,
    model: Any,
    dtype: str = "float32",
    dropout: float = 0.0,
    rng: jax.Array | None = None,
    ctc_weight: float = 0.3,
    spec_augment: bool = False,
    freq_warp: float = 0.0,
) -> dict[str, jax.Array]:
    """The Conformer's `Family.token_stats`: {"loss_sum": joint loss summed over utterances,
    "correct": attention-decoder argmax hits on weighted targets, "tokens": weight sum}. With a
    key, `freq_warp` > 0 warps each utterance's mel axis, then `spec_augment` masks."""
    base = params
    dtype = jnp.dtype(dtype)
    feats, lens = features(batch["mel"])
    if freq_warp > 0.0 and rng is not None:
        feats = conformer_inputs.freq_warp(
            feats, key=attn.fold(rng, "freq_warp"), max_warp=freq_warp
        )
    if spec_augment and rng is not None:
        feats = conformer_inputs.spec_augment(
            feats,
            lens,
            key=attn.fold(rng, "spec_augment"),
            freq_width=FREQ_WIDTH,
            time_width=TIME_WIDTH,
            time_ratio=TIME_RATIO,
        )
    kw = dict(config=model, lora=lora, dtype=dtype, dropout_rate=dropout)
    enc, enc_lens = conformer.encode(base, feats, lens, dropout_rng=attn.fold(rng, "enc"), **kw)
    w = batch["weights"].astype(jnp.float32)
    targets = batch["targets"]
    label_lens = jnp.maximum(jnp.sum(w > 0, axis=1) - 1, 0)
    real = (jnp.sum(w, axis=1) > 0).astype(jnp.float32)
    lam = ctc_weight
    per_utt = jnp.zeros(w.shape[0], jnp.float32)
    if lam > 0.0:
        logits_ctc = ctc.logits(base, enc, lora=lora, rng=attn.fold(rng, "ctc"))
        labels = jnp.where(w > 0, targets, model.blank)
        per_utt += lam * ctc.ctc_loss(logits_ctc, enc_lens, labels, label_lens, blank=model.blank)
    enc_mask = ctc.length_mask(enc_lens, enc.shape[1])
    logits = conformer.decode(
        base, batch["inputs"], enc, enc_mask, dropout_rng=attn.fold(rng, "dec"), **kw
    )
    if lam < 1.0:
        att = ctc.label_smoothing_loss(logits, targets, w > 0, smoothing=0.0)
        per_utt += (1.0 - lam) * att
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(per_utt * real),
        "correct": jnp.sum(hit * w),
        "tokens": jnp.sum(w),
    }
