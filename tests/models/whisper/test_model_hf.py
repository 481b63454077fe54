"""Parity of the functional Whisper with a tiny random Hugging Face (PyTorch) Whisper."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references.whisper_hf import (
    PROMPT,
    config,
    decode,
    encode,
    hf_logits,
    hf_tiny,
    mel_batch,
    params_of,
    random_tokens,
    torch,
)

from pqm_jax.models.common import attention
from pqm_jax.models.whisper import model as whisper


def test_encoder_and_teacher_forced_logits_match_hf():
    model = hf_tiny()
    params = params_of(model)
    mel, tokens = mel_batch(2), random_tokens(2, 12)
    with torch.no_grad():
        hf_enc = model.model.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
    enc = encode(params, jnp.asarray(mel))
    np.testing.assert_allclose(np.asarray(enc), hf_enc, atol=1e-4, rtol=1e-4)
    logits = decode(params, jnp.asarray(tokens), enc)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(model, mel, tokens), atol=1e-4)


def test_head_by_head_attention_matches_hf(monkeypatch):
    """The long-sequence path (unmasked attention one head at a time) on the tiny model too."""
    model, c = hf_tiny(), config()
    params = params_of(model)
    mel, tokens = mel_batch(2, seed=9), random_tokens(2, 6, seed=9)
    monkeypatch.setattr(attention, "LONG_ATTENTION", 1)

    @jax.jit  # a fresh function: traced with the patched threshold
    def forward(params, mel, tokens):
        return whisper.decode(params, tokens, whisper.encode(params, mel, config=c), config=c)

    logits = forward(params, jnp.asarray(mel), jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), hf_logits(model, mel, tokens), atol=1e-4)


def test_eager_logits_match_hf():
    model, c = hf_tiny(), config()
    params = params_of(model)
    mel, tokens = mel_batch(1, seed=3), random_tokens(1, 5, seed=4)
    logits = whisper.decode(
        params, jnp.asarray(tokens), whisper.encode(params, jnp.asarray(mel), config=c), config=c
    )
    np.testing.assert_allclose(np.asarray(logits), hf_logits(model, mel, tokens), atol=1e-4)


def test_cached_steps_equal_fulldecode():
    c = config()
    params = params_of(hf_tiny())
    mel, tokens = jnp.asarray(mel_batch(3, seed=5)), jnp.asarray(random_tokens(3, 10, seed=6))
    enc = encode(params, mel)
    full = decode(params, tokens, enc)
    cross = jax.jit(functools.partial(whisper.cross_kv, config=c))(params, enc)
    cache = whisper.init_cache(c, 3, 16)
    step = jax.jit(functools.partial(whisper.decode_step, config=c))
    prompt = len(PROMPT)
    logits, cache = step(params, tokens[:, :prompt], cache, cross)
    pieces = [logits]
    for t in range(prompt, tokens.shape[1]):
        logits, cache = step(params, tokens[:, t : t + 1], cache, cross)
        pieces.append(logits)
    assert int(cache.index) == tokens.shape[1]
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, 1)), full, atol=1e-4)


def test_bf16_compute_is_close():
    params = params_of(hf_tiny())
    mel, tokens = jnp.asarray(mel_batch(1, seed=7)), jnp.asarray(random_tokens(1, 8, seed=8))
    ref = decode(params, tokens, encode(params, mel))
    enc = encode(params, mel, dtype=jnp.bfloat16)
    assert enc.dtype == jnp.bfloat16
    out = decode(params, tokens, enc, dtype=jnp.bfloat16)
    assert out.dtype == jnp.float32
    err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    assert err < 0.05


def test_encode_rejects_wrong_mel_shape():
    c = config()
    params = params_of(hf_tiny())
    with pytest.raises(ValueError, match="expects mel"):
        whisper.encode(params, jnp.zeros((1, c.n_frames, c.n_mels)), config=c)


def test_presets():
    tiny_en = whisper.WhisperConfig.preset("tiny.en")
    assert (tiny_en.d_model, tiny_en.vocab_size, tiny_en.encoder_layers) == (384, 51864, 4)
    large = whisper.WhisperConfig.preset("large-v3")
    assert (large.n_mels, large.vocab_size, large.decoder_heads) == (128, 51866, 20)
    assert whisper.WhisperConfig.preset("base").vocab_size == 51865
    with pytest.raises(ValueError, match="unknown Whisper preset"):
        whisper.WhisperConfig.preset("huge")


def test_random_init_runs_and_matches_layout_of_hf():
    c = config()
    ours = jax.eval_shape(lambda key: whisper.init(c, key=key), jax.random.key(0))
    ref = params_of(hf_tiny())
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert a.shape == b.shape
