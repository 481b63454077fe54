"""What the stages of a run share (`Run`), and the run's key purposes and feature cache."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from pqm_jax import lora as lora_lib
from pqm_jax import sharding
from pqm_jax.data import feature_store, issues
from pqm_jax.run import config as config_lib
from pqm_jax.run import featurize, metrics
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.train import steps

# Keys: fold_in(key(seed), purpose) for each purpose.
KEY_MODEL, KEY_LORA, KEY_STAGE2, KEY_STAGE3, KEY_PRETRAIN = 0, 1, 2, 3, 4
# Speaker-independent pools up to this many bytes of mel are held in memory.
IN_MEMORY_BYTES = 2 << 30


class SimulatedFailure(RuntimeError):
    """Raised by `debug.fail_after_steps` (tests of resumption)."""


def input_report(config: config_lib.RunConfig) -> issues.InputReport:
    """Where a run reports bad input: strict (raise at the first) with `data.strict`."""
    return issues.InputReport(strict=config.data.strict)


def key(config: config_lib.RunConfig, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(config.seed), purpose)


def store(
    config: config_lib.RunConfig,
    workdir: workdir_lib.Workdir,
    n_mels: int,
    report: issues.InputReport | None,
    *,
    window_s: float | None = None,
) -> feature_store.FeatureStore:
    """The run's feature cache (the training window, the model's mel bins), shared by
    pretraining, the stages and the evaluation; `window_s` names another window's cache."""
    other = window_s is not None and window_s != config.model.audio_window_s
    return feature_store.FeatureStore(
        workdir.features(window_s if other else None),
        window_s=window_s if other else config.model.audio_window_s,
        n_mels=n_mels,
        report=report,
        write=jax.process_index() == 0,
    )


@dataclasses.dataclass(eq=False)
class Run:
    """What the stages share: config, folders, the placed base, the compiled-step inputs."""

    config: config_lib.RunConfig
    workdir: workdir_lib.Workdir
    mesh: jax.sharding.Mesh
    mesh_config: sharding.MeshConfig  # the mesh and its rules (the family's defaults filled in)
    base: dict
    base_shardings: Any
    step_config: steps.StepConfig
    tokenizer: Any
    store: feature_store.FeatureStore
    writer: metrics.MetricsWriter
    progress: bool = True
    updates: int = 0

    def tick(self) -> None:
        """Counts one training update; raises `SimulatedFailure` when the debug hook says so."""
        self.updates += 1
        limit = self.config.debug.fail_after_steps
        if limit and self.updates >= limit:
            raise SimulatedFailure(f"debug.fail_after_steps={limit} reached")

    def key(self, purpose: int) -> jax.Array:
        return key(self.config, purpose)

    def examples(self, entries, *, desc: str | None, in_memory: bool | None = None):
        """`featurize.examples` with a progress bar; pools too big for memory stay on disk."""
        if in_memory is None:
            frames = round(self.config.model.audio_window_s * 100)
            in_memory = len(entries) * frames * self.store.n_mels * 4 <= IN_MEMORY_BYTES
        return featurize.examples(
            entries,
            self.store,
            self.tokenizer,
            max_tokens=self.config.model.max_tokens,
            in_memory=in_memory,
            progress=self.bar(desc=desc, unit="utt") if entries and desc else None,
        )

    def bar(self, **kwargs):
        """A tqdm progress-bar factory (silent when progress is off or not process 0)."""
        from tqdm import auto as tqdm

        disable = not self.progress or jax.process_index() != 0
        return lambda it=None, **kw: tqdm.tqdm(
            it, **{"dynamic_ncols": True, "disable": disable, **kwargs, **kw}
        )


def lora_config(config: config_lib.RunConfig) -> lora_lib.LoraConfig:
    """The run's adapters: `config.lora`, with the model family's targets when it names none."""
    return config.lora.with_targets(config.model.family.lora_targets)


def step_config(config: config_lib.RunConfig, model: Any, *, pretraining: bool) -> steps.StepConfig:
    """What a step computes: pretraining trains the whole model with dropout and SpecAugment;
    the adapter stages train LoRA over the frozen base, without either."""
    spec = config.model
    if not pretraining:
        return steps.StepConfig(model=model, dtype=spec.dtype, ctc_weight=spec.ctc_weight)
    return steps.StepConfig(
        model=model,
        dtype=spec.dtype,
        dropout=config.pretrain.dropout,
        trainable="backbone",
        ctc_weight=spec.ctc_weight,
        spec_augment=config.pretrain.spec_augment,
        freq_warp=config.pretrain.freq_warp,
    )
