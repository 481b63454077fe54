"""Tiny random Whispers and random batches: for tests, benchmarks and smoke runs.

Nothing here is a real model; it exists so the training code can be exercised in seconds.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import tree as qtree

QUANT_TARGETS = whisper_family.QUANT_TARGETS


def tiny_config(
    *,
    n_mels: int = 8,
    vocab_size: int = 96,
    d_model: int = 32,
    layers: int = 1,
    heads: int = 2,
    positions: int = 16,
    max_tokens: int = 16,
) -> whisper.WhisperConfig:
    """A Whisper small enough to train in milliseconds on a CPU."""
    return whisper.WhisperConfig(
        n_mels=n_mels,
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_heads=heads,
        decoder_heads=heads,
        encoder_ffn=4 * d_model,
        decoder_ffn=4 * d_model,
        max_source_positions=positions,
        max_target_positions=max_tokens,
    )


def quantized_model(
    config: whisper.WhisperConfig,
    *,
    key: jax.Array,
    scheme: str = "nf4",
    block_size: int = 64,
    targets: tuple[str, ...] = QUANT_TARGETS,
) -> dict:
    """Random params with `targets` (default: the paper's) quantised, double quantisation on."""
    params = whisper.init(config, key=key)
    return qtree.quantize_tree(
        params,
        qtree.match_any(targets),
        scheme,
        block_size=block_size,
        double_quant=True,
    )


def adapters(
    base: dict, *, key: jax.Array, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0
) -> dict:
    """LoRA on every attention projection, with B random (not zero) so gradients reach A too."""
    config = lora_lib.LoraConfig(
        rank=rank, alpha=alpha, dropout=dropout, targets=whisper_family.LORA_TARGETS
    )
    tree = lora_lib.init(base, config, key=key)
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [x + 0.02 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


def random_batch(
    config: whisper.WhisperConfig,
    shape: tuple[int, ...],
    *,
    seed: int,
    tokens: int = 8,
    prompt: int = 2,
    frames: int | None = None,
) -> dict[str, np.ndarray]:
    """A batch of leading shape `shape` (e.g. [A, B] or [S, A, B]) with random mel and tokens.

    Each row has a random text length in [1, tokens - prompt - 1]; weights cover text + eot.
    `frames`: mel frames (None: Whisper's window, 2 * config.max_source_positions; a model
    without that field, such as the Conformer, names them).
    """
    rng = np.random.default_rng(seed)
    frames = 2 * config.max_source_positions if frames is None else frames
    mel = rng.normal(size=(*shape, config.n_mels, frames))
    seq = rng.integers(0, config.vocab_size, size=(*shape, tokens + 1)).astype(np.int32)
    length = rng.integers(prompt + 2, tokens + 1, size=shape)  # prompt + text + eot
    pos = np.arange(tokens)
    weights = (pos >= prompt - 1) & (pos < length[..., None] - 1)
    return {
        "mel": mel.astype(np.float32),
        "inputs": seq[..., :-1],
        "targets": seq[..., 1:],
        "weights": weights.astype(np.float32),
    }


def tree_max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two trees of the same structure."""
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(jnp.asarray(x) - y))), a, b)
    return max(jax.tree.leaves(diffs), default=0.0)


def whisper_model(*, d_model: int = 32, std: float = 0.5) -> Any:
    """A loaded-model handle (`pqm_jax.api.WhisperModel`) around a 1-layer random Whisper with
    tiny.en's tokenizer (vocabulary 51,864): `transcribe` runs in seconds and says nothing."""
    from pqm_jax import api, resources
    from pqm_jax.text import whisper_tokenizer

    config = whisper.WhisperConfig(
        n_mels=80,
        vocab_size=51864,
        d_model=d_model,
        encoder_layers=1,
        decoder_layers=1,
        encoder_heads=2,
        decoder_heads=2,
        encoder_ffn=2 * d_model,
        decoder_ffn=2 * d_model,
    )
    params = whisper.init(config, key=jax.random.key(0), std=std)
    tokenizer = whisper_tokenizer.load(resources.tiny_en_dir())
    return api.WhisperModel(params=params, config=config, tokenizer=tokenizer)
