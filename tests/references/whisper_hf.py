"""A tiny random Hugging Face (PyTorch) Whisper: the independent reference of the model tests.

`hf_tiny()` builds the reference model (nothing downloads), `params_of(model)` converts its state
dict to our params layout, `hf_logits` runs it; `encode`/`decode` run ours (jitted).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.models.whisper import model as whisper

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


def random_tokens(batch: int, length: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = rng.integers(0, EOT, (batch, length - len(PROMPT)))
    return np.concatenate([np.tile(PROMPT, (batch, 1)), text], axis=1).astype(np.int64)


@functools.partial(jax.jit, static_argnames=("dtype",))
def encode(params, mel, dtype=jnp.float32):
    return whisper.encode(params, mel, config=config(), dtype=dtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def decode(params, tokens, enc, dtype=jnp.float32):
    return whisper.decode(params, tokens, enc, config=config(), dtype=dtype)
