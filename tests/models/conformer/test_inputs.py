"""Character vocabulary and SpecAugment for the Conformer AED."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.models.conformer import inputs as augment
from pqm_jax.text import char_tokenizer as inputs


def test_char_vocab_round_trip_and_espnet_layout(tmp_path):
    vocab = inputs.CharVocab.build(["hello world", "hold"])
    assert vocab.tokens[0] == "<blank>" and vocab.tokens[1] == "<unk>"
    assert vocab.tokens[-1] == "<sos/eos>" and "<space>" in vocab.tokens
    ids = vocab.encode("hold low")
    assert vocab.decode(ids) == "hold low"
    assert vocab.encode("z") == [1]
    assert vocab.decode([*vocab.encode("ho"), vocab.eos, *vocab.encode("w")]) == "ho"
    vocab.save(tmp_path / "tokens.txt")
    assert inputs.CharVocab.load(tmp_path / "tokens.txt") == vocab
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="token list"):
        inputs.CharVocab.load(tmp_path / "bad.txt")


def test_min_count_drops_rare_characters():
    vocab = inputs.CharVocab.build(["aab"], min_count=2)
    assert vocab.tokens == ("<blank>", "<unk>", "a", "<sos/eos>")


def test_spec_augment_masks_bands_inside_valid_frames():
    feats = jnp.ones((3, 200, 40))
    lens = jnp.array([200, 120, 60])
    fn = jax.jit(lambda k: augment.spec_augment(feats, lens, key=k, time_width=10, freq_width=8))
    out = np.asarray(fn(jax.random.key(0)))
    assert out.shape == feats.shape
    assert not np.array_equal(out, np.asarray(feats))
    np.testing.assert_array_equal(out, np.asarray(fn(jax.random.key(0))))  # keyed, deterministic
    for i, n in enumerate([200, 120, 60]):
        freq_masked = (out[i] == 0).all(0)
        assert freq_masked.sum() <= 2 * 8
        assert (out[i, n:] == ~freq_masked).all()  # no time band in the padding
        time_zero = (out[i, :n] == 0).all(1).sum()
        assert time_zero <= 2 * min(10, int(0.05 * n))


def test_freq_warp_moves_the_mel_axis_by_a_bounded_factor():
    f = 40
    ramp = jnp.broadcast_to(jnp.arange(f, dtype=jnp.float32), (4, 7, f))
    fn = jax.jit(lambda x, k: augment.freq_warp(x, key=k, max_warp=0.15))
    out = np.asarray(fn(ramp, jax.random.key(1)))
    # bin 10 reads bin 10 / a: the factor each utterance drew, within 1 +- 0.15, not all equal
    a = 10.0 / out[:, 0, 10]
    assert np.all((a >= 0.85 - 1e-6) & (a <= 1.15 + 1e-6)) and np.ptp(a) > 0.01
    # on any features: numpy's linear interpolation at j / a, edge value past the top bin
    feats = np.random.default_rng(0).normal(size=(4, 7, f)).astype(np.float32)
    got = np.asarray(fn(jnp.asarray(feats), jax.random.key(1)))
    src = np.arange(f) / a[:, None]
    for b in range(4):
        want = np.stack([np.interp(src[b], np.arange(f), row) for row in feats[b]])
        np.testing.assert_allclose(got[b], want, atol=1e-5)
    same = augment.freq_warp(jnp.asarray(feats), key=jax.random.key(1), max_warp=0.0)
    np.testing.assert_array_equal(np.asarray(same), feats)
