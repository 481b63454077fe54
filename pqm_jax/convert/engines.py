"""Dense Whisper params -> model folders other engines load: CTranslate2 (faster-whisper) and
Hugging Face transformers, with the tokenizer and decoding settings of the source model.

    engines.write_ct2(out, params, config, source=folder, quantization="int8")
    engines.write_hf(out, params, config, source=folder)

`params` is a dense float32 Whisper params tree (e.g. `convert.merged.merge(base, adapters)`)
and `source` the folder of the model it came from (CTranslate2 or Hugging Face, holding its
`tokenizer.json`): its suppress lists, language ids and alignment heads are carried over.

A CTranslate2 folder holds `model.bin` (`models.whisper.ct2` layout, `ct2.quantize_variables`),
`config.json` (suppress_ids, suppress_ids_begin, lang_ids, alignment_heads), `tokenizer.json`,
`vocabulary.json` (or the source's `vocabulary.txt`) and `preprocessor_config.json`; a Hugging
Face folder holds `model.safetensors` (float32), `config.json`, `generation_config.json`,
`tokenizer.json` and `preprocessor_config.json`. Both engines read the encoder window from the
weights: features must be [B, n_mels, 2 * max_source_positions] (3000 frames for 30 s).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pqm_jax import jsonio, resources
from pqm_jax.models.whisper import ct2, hf
from pqm_jax.text import whisper_tokenizer

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_FFT = 400


def model_folder(name: str, path: str = "") -> pathlib.Path:
    """The folder of a run's Whisper backbone (`model.name`, `model.path`): its own folder, or
    the packaged tiny.en / base one ("random" models use tiny.en's tokenizer)."""
    if path:
        return pathlib.Path(path)
    if name in ("tiny.en", "random"):
        return resources.tiny_en_dir()
    if name == "base":
        return resources.base_dir()
    raise ValueError(f"no Whisper model folder for model {name!r}")


def default_alignment_heads(config: Any) -> list[list[int]]:
    """Every head of the decoder's second half (CTranslate2's converter default)."""
    layers = config.decoder_layers
    return [[i, h] for i in range(layers // 2, layers) for h in range(config.decoder_heads)]


def _fits(heads: Any, config: Any) -> bool:
    return isinstance(heads, list) and all(
        isinstance(p, list | tuple)
        and len(p) == 2
        and 0 <= int(p[0]) < config.decoder_layers
        and 0 <= int(p[1]) < config.decoder_heads
        for p in heads
    )


def _source_settings(source: pathlib.Path) -> dict[str, Any]:
    """suppress / language / alignment settings of a CTranslate2 (config.json) or Hugging Face
    (generation_config.json) folder, under CTranslate2's names; {} when neither says."""
    generation = source / "generation_config.json"
    if generation.is_file():
        g = jsonio.read_object(generation, what="the model's generation config")
        out = {"suppress_ids": g.get("suppress_tokens")}
        out["suppress_ids_begin"] = g.get("begin_suppress_tokens")
        out["alignment_heads"] = g.get("alignment_heads")
        out["lang_ids"] = sorted(g["lang_to_id"].values()) if g.get("lang_to_id") else None
        return out
    config = source / "config.json"
    if config.is_file():
        c = jsonio.read_object(config, what="the model's CTranslate2 config")
        if "suppress_ids" in c:  # a CTranslate2 config, not an HF model config
            return dict(c)
    return {}


def ct2_config(tokenizer: Any, config: Any, source: pathlib.Path | None) -> dict[str, Any]:
    """CTranslate2 `config.json` for `config`: the source's settings, the tokenizer's where the
    source has none; alignment heads that do not exist in `config` (a smaller random model
    with tiny.en's files) are replaced by the default."""
    out = _source_settings(pathlib.Path(source)) if source is not None else {}
    out = {k: v for k, v in out.items() if v is not None}
    out.setdefault("suppress_ids", list(tokenizer.suppress_tokens))
    out.setdefault("suppress_ids_begin", list(tokenizer.begin_suppress_tokens))
    if tokenizer.multilingual:
        out.setdefault("lang_ids", sorted(tokenizer.special.languages.values()))
    else:
        out.setdefault("lang_ids", None)
    if not _fits(out.get("alignment_heads"), config):
        out["alignment_heads"] = default_alignment_heads(config)
    return out


def generation_config(
    tokenizer: Any, config: Any, alignment_heads: Sequence[Sequence[int]] | None = None
) -> dict[str, Any]:
    """Hugging Face `generation_config.json` of a Whisper with this tokenizer (token ids,
    suppress lists, languages and tasks of a multilingual model, alignment heads)."""
    ids = tokenizer.special
    out = {**token_ids(tokenizer), "max_length": config.max_target_positions}
    out |= {
        "suppress_tokens": list(tokenizer.suppress_tokens),
        "begin_suppress_tokens": list(tokenizer.begin_suppress_tokens),
        "no_timestamps_token_id": ids.no_timestamps,
        "is_multilingual": tokenizer.multilingual,
    }
    if tokenizer.multilingual:
        out["lang_to_id"] = {f"<|{k}|>": v for k, v in ids.languages.items()}
        out["task_to_id"] = {"transcribe": ids.transcribe, "translate": ids.translate}
    if alignment_heads:
        out["alignment_heads"] = [list(map(int, p)) for p in alignment_heads]
    return out


def token_ids(tokenizer: Any) -> dict[str, int]:
    """bos / eos / pad / decoder_start token ids for a Hugging Face Whisper config."""
    ids = tokenizer.special
    return {
        "bos_token_id": ids.eot,
        "eos_token_id": ids.eot,
        "pad_token_id": ids.eot,
        "decoder_start_token_id": ids.sot,
    }


def preprocessor_config(config: Any) -> dict[str, Any]:
    """`preprocessor_config.json` (transformers' WhisperFeatureExtractor; faster-whisper reads
    it too) for the encoder window of `config`: 2 mel frames per encoder position."""
    frames = 2 * config.max_source_positions
    seconds = frames * HOP_LENGTH / SAMPLE_RATE
    return {
        "chunk_length": int(seconds) if float(seconds).is_integer() else seconds,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": config.n_mels,
        "hop_length": HOP_LENGTH,
        "n_fft": N_FFT,
        "n_samples": frames * HOP_LENGTH,
        "nb_max_frames": frames,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": SAMPLE_RATE,
    }


def _write_json(path: pathlib.Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(dict(value), indent=2) + "\n")


def _copy_tokenizer(source: pathlib.Path, out: pathlib.Path) -> None:
    file = source / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: the exported model needs its tokenizer")
    shutil.copyfile(file, out / "tokenizer.json")


def write_ct2(
    out: str | os.PathLike,
    params: Mapping[str, Any],
    config: Any,
    *,
    source: str | os.PathLike,
    quantization: str = "float16",
) -> pathlib.Path:
    """Writes a CTranslate2 Whisper folder (`ctranslate2.models.Whisper(out)`, faster-whisper's
    `WhisperModel(out)` when the window is 30 s).

    Args:
      out: folder to create (files in it are overwritten).
      params: dense Whisper params (float32 arrays, kernels [in, out]).
      config: its `WhisperConfig`.
      source: folder of the model the params came from (tokenizer.json; config.json or
        generation_config.json for the decoding settings).
      quantization: "float16" (CTranslate2's usual), "int8" (int8 weights, per-row float32
        `weight_scale`, other tensors float32) or "float32".

    Returns:
      The folder.
    """
    source, folder = pathlib.Path(source), pathlib.Path(out)
    tokenizer = whisper_tokenizer.load(source)
    folder.mkdir(parents=True, exist_ok=True)
    variables, aliases = ct2.variables_from_params(params, config, dtype=np.float32)
    variables = ct2.quantize_variables(variables, quantization)
    ct2.write_model_bin(folder / "model.bin", variables, aliases=aliases)
    _write_json(folder / "config.json", ct2_config(tokenizer, config, source))
    _copy_tokenizer(source, folder)
    vocabulary = [p for p in ("vocabulary.json", "vocabulary.txt") if (source / p).is_file()]
    if vocabulary:
        shutil.copyfile(source / vocabulary[0], folder / vocabulary[0])
    else:  # an HF source: the tokens in id order, as CTranslate2's converter writes them
        tokens = [tokenizer.backend.id_to_token(i) for i in range(config.vocab_size)]
        (folder / "vocabulary.json").write_text(json.dumps(tokens, indent=0))
    _write_json(folder / "preprocessor_config.json", preprocessor_config(config))
    return folder


def write_hf(
    out: str | os.PathLike,
    params: Mapping[str, Any],
    config: Any,
    *,
    source: str | os.PathLike,
) -> pathlib.Path:
    """Writes a Hugging Face Whisper folder (`WhisperForConditionalGeneration.from_pretrained
    (out)`): float32 `model.safetensors`, `config.json`, `generation_config.json` (the source's
    suppress lists and alignment heads), `tokenizer.json` and `preprocessor_config.json`."""
    source, folder = pathlib.Path(source), pathlib.Path(out)
    tokenizer = whisper_tokenizer.load(source)
    heads = ct2_config(tokenizer, config, source)["alignment_heads"]
    generation = generation_config(tokenizer, config, heads)
    hf.save(folder, params, config, hf_config=token_ids(tokenizer), generation_config=generation)
    _copy_tokenizer(source, folder)
    _write_json(folder / "preprocessor_config.json", preprocessor_config(config))
    return folder
