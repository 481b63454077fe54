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
