"""Parity of the functional Whisper with a tiny random Hugging Face (PyTorch) Whisper.

Also the shared fixtures of the model tests: `hf_tiny()` builds the reference model (nothing
downloads) and `params_of(model)` converts its state dict to our params layout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.models import attention, whisper

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Token ids of the tiny vocabulary, laid out as Whisper's (text, eot, sot, languages, tasks, ...).
VOCAB = 320
EOT, SOT, LANG_EN, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS = 300, 301, 302, 303, 304, 305
SUPPRESS = (1, 2, 7, 14, 25, 299, TRANSLATE, TRANSCRIBE, SOT, LANG_EN)
BEGIN_SUPPRESS = (220, EOT)
PROMPT = (SOT, NO_TIMESTAMPS)  # English-only model: no language/task tokens


def config() -> whisper.WhisperConfig:
    return whisper.WhisperConfig(
        n_mels=16,
        vocab_size=VOCAB,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_heads=4,
        decoder_heads=4,
        encoder_ffn=128,
        decoder_ffn=96,
        max_source_positions=60,
        max_target_positions=64,
    )


@functools.cache
def hf_tiny(seed: int = 0):
    """A random `WhisperForConditionalGeneration` matching `config()`, in eval mode, float32."""
    c = config()
    torch.manual_seed(seed)
    hf_config = transformers.WhisperConfig(
        vocab_size=c.vocab_size,
        num_mel_bins=c.n_mels,
        d_model=c.d_model,
        encoder_layers=c.encoder_layers,
        decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.encoder_heads,
        decoder_attention_heads=c.decoder_heads,
        encoder_ffn_dim=c.encoder_ffn,
        decoder_ffn_dim=c.decoder_ffn,
        max_source_positions=c.max_source_positions,
        max_target_positions=c.max_target_positions,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        suppress_tokens=list(SUPPRESS),
        begin_suppress_tokens=list(BEGIN_SUPPRESS),
        init_std=0.1,
        attn_implementation="eager",
    )
    model = transformers.WhisperForConditionalGeneration(hf_config).eval()
    # Random models collapse into repeating one token and never stop. Larger decoder position
    # embeddings vary the output, and a ramp along a direction w that the end-of-text embedding
    # shares makes stopping more likely with position: rows end at different lengths.
    with torch.no_grad():
        w = torch.randn(c.d_model)
        w /= w.norm()
        ramp = torch.arange(c.max_target_positions, dtype=torch.float32)[:, None]
        pos = model.model.decoder.embed_positions.weight
        pos.mul_(10.0).add_(4.0 * ramp / c.max_target_positions * w[None])
        model.model.decoder.embed_tokens.weight[EOT] = 3.0 * w
    g = model.generation_config
    g.decoder_start_token_id = SOT
    g.eos_token_id = EOT
    g.pad_token_id = EOT
    g.no_timestamps_token_id = NO_TIMESTAMPS
    g.suppress_tokens = list(SUPPRESS)
    g.begin_suppress_tokens = list(BEGIN_SUPPRESS)
    g.is_multilingual = False
    g.max_length = c.max_target_positions
    g.forced_decoder_ids = None
    return model


def _linear(sd: dict, prefix: str, bias: bool = True) -> dict:
    p = {"kernel": sd[f"{prefix}.weight"].T}
    if bias and f"{prefix}.bias" in sd:
        p["bias"] = sd[f"{prefix}.bias"]
    return p


def _ln(sd: dict, prefix: str) -> dict:
    return {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}


def _layer(sd: dict, prefix: str, cross: bool) -> dict:
    def att(name: str) -> dict:
        a = {m: _linear(sd, f"{prefix}.{name}.{m}") for m in ("q_proj", "v_proj", "out_proj")}
        a["k_proj"] = _linear(sd, f"{prefix}.{name}.k_proj", bias=False)
        return a

    p = {
        "self_attn_layer_norm": _ln(sd, f"{prefix}.self_attn_layer_norm"),
        "self_attn": att("self_attn"),
        "final_layer_norm": _ln(sd, f"{prefix}.final_layer_norm"),
        "fc1": _linear(sd, f"{prefix}.fc1"),
        "fc2": _linear(sd, f"{prefix}.fc2"),
    }
    if cross:
        p["encoder_attn_layer_norm"] = _ln(sd, f"{prefix}.encoder_attn_layer_norm")
        p["encoder_attn"] = att("encoder_attn")
    return p


def params_of(model) -> dict:
    """Our params tree from a HF Whisper state dict (a test-local converter, independent of
    `pqm_jax.convert`, so the parity tests check the model, not a shared conversion)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    c = model.config
    conv = lambda name: {  # torch [out, in, width] -> [width, in, out]
        "kernel": sd[f"model.encoder.{name}.weight"].transpose(2, 1, 0),
        "bias": sd[f"model.encoder.{name}.bias"],
    }
    enc = {
        "conv1": conv("conv1"),
        "conv2": conv("conv2"),
        "embed_positions": sd["model.encoder.embed_positions.weight"],
        "layer_norm": _ln(sd, "model.encoder.layer_norm"),
    }
    for i in range(c.encoder_layers):
        enc[f"layers_{i}"] = _layer(sd, f"model.encoder.layers.{i}", cross=False)
    dec = {
        "embed_tokens": sd["model.decoder.embed_tokens.weight"],
        "embed_positions": sd["model.decoder.embed_positions.weight"],
        "layer_norm": _ln(sd, "model.decoder.layer_norm"),
    }
    for i in range(c.decoder_layers):
        dec[f"layers_{i}"] = _layer(sd, f"model.decoder.layers.{i}", cross=True)
    return jax.tree.map(jnp.asarray, {"encoder": enc, "decoder": dec})


def mel_batch(batch: int, seed: int = 0) -> np.ndarray:
    """Random features [batch, n_mels, frames]; rows differ in scale, so their transcripts (and
    lengths) differ."""
    c = config()
    rng = np.random.default_rng(seed)
    scales = np.resize([0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 0.1, 1.5], batch)[:, None, None]
    return (scales * rng.normal(size=(batch, c.n_mels, c.n_frames))).astype(np.float32)


def hf_logits(model, mel: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens)
        )
    return out.logits.numpy()


def _tokens(batch: int, length: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = rng.integers(0, EOT, (batch, length - len(PROMPT)))
    return np.concatenate([np.tile(PROMPT, (batch, 1)), text], axis=1).astype(np.int64)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _encode(params, mel, dtype=jnp.float32):
    return whisper.encode(params, mel, config=config(), dtype=dtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _decode(params, tokens, enc, dtype=jnp.float32):
    return whisper.decode(params, tokens, enc, config=config(), dtype=dtype)


def test_encoder_and_teacher_forced_logits_match_hf():
    model = hf_tiny()
    params = params_of(model)
    mel, tokens = mel_batch(2), _tokens(2, 12)
    with torch.no_grad():
        hf_enc = model.model.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
    enc = _encode(params, jnp.asarray(mel))
    np.testing.assert_allclose(np.asarray(enc), hf_enc, atol=1e-4, rtol=1e-4)
    logits = _decode(params, jnp.asarray(tokens), enc)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(model, mel, tokens), atol=1e-4)


def test_head_by_head_attention_matches_hf(monkeypatch):
    """The long-sequence path (unmasked attention one head at a time) on the tiny model too."""
    model, c = hf_tiny(), config()
    params = params_of(model)
    mel, tokens = mel_batch(2, seed=9), _tokens(2, 6, seed=9)
    monkeypatch.setattr(attention, "LONG_ATTENTION", 1)

    @jax.jit  # a fresh function: traced with the patched threshold
    def forward(params, mel, tokens):
        return whisper.decode(params, tokens, whisper.encode(params, mel, config=c), config=c)

    logits = forward(params, jnp.asarray(mel), jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), hf_logits(model, mel, tokens), atol=1e-4)


def test_eager_logits_match_hf():
    model, c = hf_tiny(), config()
    params = params_of(model)
    mel, tokens = mel_batch(1, seed=3), _tokens(1, 5, seed=4)
    logits = whisper.decode(
        params, jnp.asarray(tokens), whisper.encode(params, jnp.asarray(mel), config=c), config=c
    )
    np.testing.assert_allclose(np.asarray(logits), hf_logits(model, mel, tokens), atol=1e-4)


def test_cached_steps_equal_full_decode():
    c = config()
    params = params_of(hf_tiny())
    mel, tokens = jnp.asarray(mel_batch(3, seed=5)), jnp.asarray(_tokens(3, 10, seed=6))
    enc = _encode(params, mel)
    full = _decode(params, tokens, enc)
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
    mel, tokens = jnp.asarray(mel_batch(1, seed=7)), jnp.asarray(_tokens(1, 8, seed=8))
    ref = _decode(params, tokens, _encode(params, mel))
    enc = _encode(params, mel, dtype=jnp.bfloat16)
    assert enc.dtype == jnp.bfloat16
    out = _decode(params, tokens, enc, dtype=jnp.bfloat16)
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
