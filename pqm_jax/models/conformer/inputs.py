"""SpecAugment for the Conformer's features (frequency and time masks, jittable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masks(key: jax.Array, size: jax.Array, n: int, width: jax.Array, axis_len: int) -> jax.Array:
    """n random bands per row: [B, axis_len] True inside a band. size, width: [B] limits."""
    b = size.shape[0]
    kw, ks = jax.random.split(key)
    w = jnp.floor(jax.random.uniform(kw, (b, n)) * (width[:, None] + 1)).astype(jnp.int32)
    room = jnp.maximum(size[:, None] - w, 0)
    start = jnp.floor(jax.random.uniform(ks, (b, n)) * (room + 1)).astype(jnp.int32)
    pos = jnp.arange(axis_len)[None, None, :]
    band = (pos >= start[..., None]) & (pos < (start + w)[..., None])
    return band.any(1)


def spec_augment(
    feats: jax.Array,
    feat_lens: jax.Array,
    *,
    key: jax.Array,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width: int = 40,
    time_ratio: float = 0.05,
) -> jax.Array:
    """SpecAugment frequency and time masking (no time warp), zeros as the mask value.

    Each utterance gets `freq_masks` bands of 0..freq_width bins and `time_masks` bands of
    0..min(time_width, time_ratio * length) frames inside its valid frames (ESPnet2's LibriSpeech
    settings by default). Jittable; the key decides everything.

    Args:
      feats: [B, T, F]; feat_lens: [B].

    Returns:
      [B, T, F] masked features.
    """
    b, t, f = feats.shape
    kf, kt = jax.random.split(key)
    fw = jnp.full((b,), min(freq_width, f), jnp.int32)
    fmask = _masks(kf, jnp.full((b,), f, jnp.int32), freq_masks, fw, f)  # [B, F]
    lens = jnp.asarray(feat_lens, jnp.int32)
    tw = jnp.minimum(time_width, jnp.floor(time_ratio * lens).astype(jnp.int32))
    tmask = _masks(kt, lens, time_masks, tw, t)  # [B, T]
    masked = fmask[:, None, :] | tmask[:, :, None]
    return jnp.where(masked, jnp.zeros((), feats.dtype), feats)


def freq_warp(feats: jax.Array, *, key: jax.Array, max_warp: float = 0.1) -> jax.Array:
    """Warps each utterance's frequency axis by a factor a drawn from U(1 - max_warp,
    1 + max_warp): bin j takes the value at bin j / a (linear interpolation, the top bin
    repeated past the edge), so a > 1 moves formants up, as a shorter vocal tract does (VTLP on
    the mel axis). Jittable; the key decides everything.

    Args:
      feats: [B, T, F].

    Returns:
      [B, T, F] warped features.
    """
    b, _, f = feats.shape
    a = 1.0 + jax.random.uniform(key, (b,), minval=-max_warp, maxval=max_warp)
    src = jnp.clip(jnp.arange(f, dtype=jnp.float32)[None, :] / a[:, None], 0.0, f - 1.0)
    lo = jnp.floor(src).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, f - 1)
    frac = (src - lo).astype(feats.dtype)[:, None, :]
    take = lambda idx: jnp.take_along_axis(feats, jnp.broadcast_to(idx[:, None, :], feats.shape), 2)
    return take(lo) * (1 - frac) + take(hi) * frac
