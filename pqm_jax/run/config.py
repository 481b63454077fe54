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

from pqm_jax import errors, sharding
from pqm_jax import lora as lora_lib
from pqm_jax.data import spec as data_spec
from pqm_jax.models import family
from pqm_jax.train import adapt, optim

ConfigError = errors.ConfigError
ModelSpec = family.ModelSpec
DataSpec = data_spec.DataSpec


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """Training the Conformer from scratch (model.name "conformer" with no model.path): every
    weight, in full precision, on the speaker-independent pool, before quantisation.

    Attributes:
      steps: updates; batch_size, eval_batch_size, eval_every, ckpt_every: as in stage 2.
      dropout: dropout of the backbone while pretraining.
      spec_augment: SpecAugment (2 frequency and 2 time masks) on the training batches.
      freq_warp: mel-axis warping of the training batches by a factor drawn per utterance from
        1 +- freq_warp (a vocal-tract-length perturbation on the features; 0 = off).
      optim: optimiser (ESPnet style: Adam with warm-up, then decay).
    """

    steps: int = 1000
    batch_size: int = 16
    eval_batch_size: int = 16
    eval_every: int = 200
    ckpt_every: int = 100
    dropout: float = 0.1
    spec_augment: bool = True
    freq_warp: float = 0.0
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


DENSE_BASE = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Stage3Spec(adapt.AdaptSchedule):
    """Per-speaker adaptation: the schedule fields of `adapt.AdaptSchedule`, and

    Attributes:
      enabled: False stops the run after stage 2.
      ckpt_every: checkpoint the running chunk every this many steps (0 = only at its end).
      memory_budget_mb: with chunk_speakers 0, chunks hold as many speakers as fit in this
        much memory (adapters, optimiser state, best adapters, features); only the running
        chunk's features are in memory.
      dense_base: "off", "on" or "auto". Off: every update decodes the NF4 weights it uses
        (least memory; on this 2-core CPU the fastest for banks of 16 speakers, 1.04-1.32x
        quicker than a dense copy in bench/bench_adapt_limit.py). On: the base is decoded once
        for the whole stage, in the compute dtype, and the updates read that dense copy (the
        same values, so the same adapters; for one speaker it removes the decoding, up to
        1.2x). Auto: on when the copy takes at most a quarter of `memory_budget_mb`.
      optim: optimiser (paper: Adam, lr 1e-3 with exponential decay).
    """

    enabled: bool = True
    ckpt_every: int = 20
    memory_budget_mb: float = 4096.0
    dense_base: str = "off"
    optim: optim.OptimConfig = dataclasses.field(
        default_factory=lambda: optim.OptimConfig(
            name="adam", learning_rate=1e-3, schedule="exponential", decay_rate=0.9
        )
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dense_base not in DENSE_BASE:
            raise ValueError(
                f"stage3.dense_base must be one of {DENSE_BASE}, got {self.dense_base!r}"
            )

    def adapt_config(self, seed: int) -> adapt.AdaptConfig:
        return adapt.AdaptConfig.from_schedule(self, seed=seed)


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """Multi-process start (`jax.distributed.initialize`); empty fields are auto-detected
    (SLURM, TPU pods, Open MPI). timeout_s bounds the wait for the other processes at start
    and how long a process that stopped answering is waited for before the others stop."""

    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    timeout_s: int = 120


@dataclasses.dataclass(frozen=True)
class DebugSpec:
    """Test hooks. fail_after_steps: raise `SimulatedFailure` after this many training
    updates in this process (0 = off), to test resumption."""

    fail_after_steps: int = 0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run: [pretrain (Conformer) ->] quantise -> stage 2 -> stage 3."""

    seed: int = 0
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    lora: lora_lib.LoraConfig = dataclasses.field(
        default_factory=lambda: lora_lib.LoraConfig(rank=8, alpha=16.0)
    )  # targets () = the model family's
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
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
    if config.stage3.memory_budget_mb <= 0:
        raise ConfigError("stage3.memory_budget_mb must be > 0")
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
    return load_module(path).get_config()


def load_module(path: str | os.PathLike) -> Any:
    """A `configs/*.py` file as a module (for configs built from another's functions)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see configs/*.py)")
    spec = importlib.util.spec_from_file_location(f"pqm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
