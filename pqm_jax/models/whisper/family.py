"""Whisper as a model family: packaged CTranslate2 weights (tiny.en, base) or a small random
model, HF token conventions, a fixed 30 s encoder window that runs may cut shorter."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pqm_jax import errors, jit_cache, resources
from pqm_jax.models import family as family_lib
from pqm_jax.models.whisper import ct2, decoding, hf
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import base as qbase
from pqm_jax.text import whisper_tokenizer

# The paper's LoRA targets: the attention projections (HF module names).
LORA_TARGETS = (r"(self_attn|encoder_attn)/(q_proj|k_proj|v_proj|out_proj)$",)
# Quantisation targets by kind (`pqm_jax.load_model` switches them one by one).
LINEAR_TARGETS = (
    r"(self_attn|encoder_attn)/(q_proj|k_proj|v_proj|out_proj)/kernel$",
    r"/fc[12]/kernel$",
)
CONV_TARGETS = (r"^encoder/conv[12]/kernel$",)
EMBEDDING_TARGETS = (r"^decoder/embed_tokens$",)
# A run's default: attention and MLP linears, convolutions, token embedding.
QUANT_TARGETS = LINEAR_TARGETS + CONV_TARGETS + EMBEDDING_TARGETS
# Megatron-style split of the frozen base over "model": column-parallel q/k/v/fc1, row-parallel
# out_proj/fc2, the tied token embedding by vocabulary rows.
SHARD_RULES = (
    (r"(q_proj|k_proj|v_proj|fc1)/kernel$", (None, "model")),
    (r"(out_proj|fc2)/kernel$", ("model", None)),
    (r"embed_tokens$", ("model", None)),
)
FULL_POSITIONS_PER_S = 50  # encoder positions per second of audio (2 mel frames of 10 ms)


def window_positions(window_s: float) -> int:
    """Encoder positions of an audio window: 50 per second (2 mel frames of 10 ms each)."""
    positions = round(window_s * FULL_POSITIONS_PER_S)
    if positions < 1 or abs(positions - window_s * FULL_POSITIONS_PER_S) > 1e-6:
        raise ValueError(f"audio_window_s must be a positive multiple of 0.02 s, got {window_s}")
    return positions


def window(params: dict, config: whisper.WhisperConfig, window_s: float) -> tuple[dict, Any]:
    """The model cut to an audio window of `window_s` seconds (30 = Whisper as released).

    Whisper's encoder takes a fixed 30 s window; a shorter one keeps the first positions of the
    (sinusoidal) encoder position table, as whisper.cpp's `audio_ctx` does. Training and
    evaluation must use the same window.

    Returns:
      (params with `encoder/embed_positions` [positions, d], config with max_source_positions =
      positions, so `encode` expects mel [B, n_mels, 2 * positions]).
    """
    positions = window_positions(window_s)
    if positions > config.max_source_positions:
        raise ValueError(
            f"audio window {window_s} s needs {positions} encoder positions; the model has "
            f"{config.max_source_positions} ({config.max_source_positions / 50:g} s)"
        )
    table = params["encoder"]["embed_positions"]
    if qbase.is_quantized(table):
        raise ValueError("encoder/embed_positions must stay unquantised to cut the window")
    encoder = {**params["encoder"], "embed_positions": table[:positions]}
    cut = dataclasses.replace(config, max_source_positions=positions)
    return {**params, "encoder": encoder}, cut


def folder_format(path: pathlib.Path) -> str | None:
    """ "ct2" for a CTranslate2 folder (`model.bin` or `model.bin.part*`), "hf" for a Hugging
    Face folder (`config.json` + `model.safetensors` or `pytorch_model.bin`, maybe sharded),
    else None."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return None
    if (path / "model.bin").is_file() or any(path.glob("model.bin.part*")):
        return "ct2"
    weights = [*path.glob("model*.safetensors*"), *path.glob("pytorch_model*.bin*")]
    if (path / "config.json").is_file() and weights:
        return "hf"
    return None


def read_folder(path: pathlib.Path) -> tuple[dict, whisper.WhisperConfig]:
    """(params, config) of a CTranslate2 or Hugging Face Whisper folder.

    Raises:
      FileNotFoundError: `path` is neither (the message says what each needs).
    """
    kind = folder_format(path)
    if kind == "ct2":
        params, cfg, _ = ct2.load(path)
        return params, cfg
    if kind == "hf":
        params, cfg, _ = hf.load(path)
        return params, cfg
    raise FileNotFoundError(
        f"{path} is not a Whisper folder: a CTranslate2 folder holds model.bin (or "
        "model.bin.part*) and tokenizer.json; a Hugging Face folder holds config.json, "
        "model.safetensors and tokenizer.json"
    )


def random_config(spec: family_lib.ModelSpec) -> whisper.WhisperConfig:
    """The "random" model of `spec`: its dimensions, the tiny.en vocabulary, the run's window."""
    return whisper.WhisperConfig(
        n_mels=80,
        vocab_size=51864,
        d_model=spec.d_model,
        encoder_layers=spec.layers,
        decoder_layers=spec.layers,
        encoder_heads=spec.heads,
        decoder_heads=spec.heads,
        encoder_ffn=4 * spec.d_model,
        decoder_ffn=4 * spec.d_model,
        max_source_positions=window_positions(spec.audio_window_s),
        max_target_positions=spec.max_tokens,
    )


class WhisperFamily(family_lib.Family):
    name = "whisper"
    models = ("tiny.en", "base", "random")
    config_type = whisper.WhisperConfig
    max_tokens = 448  # Whisper's decoder has 448 positions
    lora_targets = LORA_TARGETS
    quant_targets = QUANT_TARGETS
    shard_rules = SHARD_RULES
    takes_path = True  # a CTranslate2 or Hugging Face folder instead of the packaged weights

    def check(self, spec: family_lib.ModelSpec) -> None:
        super().check(spec)
        if spec.name == "random" and spec.d_model % spec.heads:
            raise errors.ConfigError("model.d_model must be divisible by model.heads")
        if spec.name == "random" and spec.path:
            raise errors.ConfigError(
                "model.path names real weights: use model.name='tiny.en' (or 'base') with it, "
                "not 'random'"
            )

    def check_folder(self, folder: pathlib.Path) -> None:
        if folder_format(folder) is None:
            read_folder(folder)  # raises, naming what a folder needs
        if not (pathlib.Path(folder) / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json (copy the model's own)")

    def load(self, spec, *, seed: int, folder: pathlib.Path | None = None):
        del folder  # a Whisper run never trains its backbone from scratch
        if spec.path:
            path = pathlib.Path(spec.path)
            params, cfg = read_folder(path)
            return params, cfg, whisper_tokenizer.load(path)
        if spec.name == "tiny.en":
            path = resources.tiny_en_dir()
            params, cfg, _ = ct2.load(path)
            return params, cfg, whisper_tokenizer.load(path)
        if spec.name == "base":
            path = resources.base_dir()
            params, cfg, _ = ct2.load_parts(
                resources.base_parts(), config_json=path / "config.json"
            )
            return params, cfg, whisper_tokenizer.load(path)
        cfg = random_config(spec)
        key = jax.random.fold_in(jax.random.key(seed), 0)
        init = jit_cache.cached(("whisper.init",), lambda: jax.jit(whisper.init, static_argnums=0))
        return init(cfg, key=key), cfg, whisper_tokenizer.load(resources.tiny_en_dir())

    def window(self, params, config, window_s):
        return window(params, config, window_s)

    def full_window_s(self, config: whisper.WhisperConfig) -> float:
        return config.max_source_positions / FULL_POSITIONS_PER_S

    def token_stats(
        self,
        params,
        lora,
        batch,
        *,
        model,
        dtype,
        dropout,
        rng,
        ctc_weight,
        spec_augment,
        freq_warp=0.0,
    ):
        del ctc_weight, spec_augment, freq_warp  # not Whisper's
        kw = dict(config=model, lora=lora, dtype=jnp.dtype(dtype))
        kw |= dict(dropout_rng=rng, dropout_rate=dropout)
        enc = whisper.encode(params, batch["mel"], **kw)
        logits = whisper.decode(params, batch["inputs"], enc, **kw)  # float32 [B, T, vocab]
        targets = batch["targets"]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        w = batch["weights"].astype(jnp.float32)
        # a hit: the target's logit is the largest (argmax, without its index-carrying reduce,
        # which XLA's CPU backend runs scalar; a tie for the largest counts as a hit)
        best = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
        picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        hit = (picked >= best).astype(jnp.float32)
        return {"loss_sum": jnp.sum(nll * w), "correct": jnp.sum(hit * w), "tokens": jnp.sum(w)}

    def decode_options(
        self, tokenizer, spec, *, beam_size, max_new_tokens, max_repeats, max_period
    ) -> decoding.DecodeOptions:
        return decoding.DecodeOptions(
            prompt=tuple(tokenizer.prompt()),
            eot=tokenizer.special.eot,
            suppress=tokenizer.suppress_tokens,
            begin_suppress=tokenizer.begin_suppress_tokens,
            max_new_tokens=max_new_tokens,
            beam_size=beam_size,
            max_repeats=max_repeats,
            max_period=max_period,
            dtype=spec.dtype,
        )

    def generate(self, params, mel, *, config, options, lora, bank):
        del bank  # decoding.generate reads a per-example bank from the adapters' shapes
        res = decoding.generate(params, mel, config=config, options=options, lora=lora)
        return np.asarray(res.tokens), np.asarray(res.lengths)


FAMILY = family_lib.register(WhisperFamily())
