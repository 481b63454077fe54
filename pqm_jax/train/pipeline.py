"""quantise -> stage 2 -> stage 3, resumable from any point: the library behind `train.py`.

A run lives in one work folder:

    config.json            the run's configuration (a resumed run must match it)
    metrics.jsonl, tb/     metrics (JSON lines; TensorBoard scalars); metrics.png at the end
    features/              cached log-mel windows (reused by resumed runs and the evaluation)
    pretrain/              Conformer runs: the model trained from scratch (see `pretrain`)
    data/synth/            rendered synthetic speakers (source "synth")
    ckpt/base              the quantised base, saved once
    ckpt/pretrain, stage2, stage3    rolling checkpoints of the running stage (adapters, optimiser
                           state, data position); deleted when the stage's result is saved
    stage2/final           the selected speaker-independent adapters (+ info)
    stage3/bank/chunk_NNNN one speaker per item (restore one without reading the others)
    stage3/manifest.json   speakers -> chunk/item, steps, start and best dev accuracy

`run_pipeline` skips whatever is already complete and resumes the rest from its newest valid
checkpoint; `results.load` reads the outcome back.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import warnings
from typing import Any

import jax
import numpy as np

from pqm_jax import checkpoint, resources, sharding
from pqm_jax import lora as lora_lib
from pqm_jax import text as text_lib
from pqm_jax.convert import ct2
from pqm_jax.data import issues
from pqm_jax.models import conformer, conformer_inputs, whisper
from pqm_jax.quant import tree as qtree
from pqm_jax.train import config as config_lib
from pqm_jax.train import corpus as corpus_lib
from pqm_jax.train import featurize, metrics, pretrain, stages, steps

# Keys: fold_in(key(seed), purpose) for each purpose.
KEY_MODEL, KEY_LORA, KEY_STAGE2, KEY_STAGE3 = 0, 1, 2, 3
# Speaker-independent pools up to this many bytes of mel are held in memory.
IN_MEMORY_BYTES = 2 << 30
# Differences that do not change what a run computes (allowed between attempts).
_VOLATILE = ("debug", "distributed")


class SimulatedFailure(RuntimeError):
    """Raised by `debug.fail_after_steps` (tests of resumption)."""


def init_distributed(spec: config_lib.DistributedSpec) -> None:
    """`jax.distributed.initialize` for a multi-host run; call before any other JAX use."""
    if not spec.enabled:
        return
    kwargs: dict[str, Any] = {}
    if spec.coordinator_address:
        kwargs["coordinator_address"] = spec.coordinator_address
    if spec.num_processes:
        kwargs["num_processes"] = spec.num_processes
    if spec.process_id >= 0:
        kwargs["process_id"] = spec.process_id
    jax.distributed.initialize(**kwargs)


def load_backbone(
    spec: config_lib.ModelSpec, *, seed: int, workdir: str | pathlib.Path | None = None
) -> tuple[dict, Any, Any]:
    """Full-precision (params, model config, tokenizer) of `spec.name` (nothing downloads).

    A Conformer is read from its model folder (`spec.path`, else `<workdir>/pretrain`).
    """
    if spec.name == "conformer":
        return pretrain.load(pretrain.folder(spec, workdir))
    if spec.name == "tiny.en":
        folder = resources.tiny_en_dir()
        params, cfg, _ = ct2.load(folder)
        return params, cfg, text_lib.load(folder)
    if spec.name == "base":
        folder = resources.base_dir()
        params, cfg, _ = ct2.load_parts(resources.base_parts(), config_json=folder / "config.json")
        return params, cfg, text_lib.load(folder)
    tokenizer = text_lib.load(resources.tiny_en_dir())
    cfg = whisper.WhisperConfig(
        n_mels=80,
        vocab_size=51864,
        d_model=spec.d_model,
        encoder_layers=spec.layers,
        decoder_layers=spec.layers,
        encoder_heads=spec.heads,
        decoder_heads=spec.heads,
        encoder_ffn=4 * spec.d_model,
        decoder_ffn=4 * spec.d_model,
        max_source_positions=steps.window_positions(spec.audio_window_s),
        max_target_positions=spec.max_tokens,
    )
    key = jax.random.fold_in(jax.random.key(seed), KEY_MODEL)
    init = steps.cached(("whisper.init",), lambda: jax.jit(whisper.init, static_argnums=0))
    return init(cfg, key=key), cfg, tokenizer


def quant_targets(spec: config_lib.ModelSpec) -> tuple[str, ...]:
    """The quantised parameter paths: `spec.quant_targets`, except that a Conformer left with
    Whisper's default targets gets its own (every linear and convolution kernel, the token
    embedding)."""
    if spec.name == "conformer" and spec.quant_targets == config_lib.QUANT_TARGETS:
        return conformer.QUANT_TARGETS
    return spec.quant_targets


def quantize(params: dict, spec: config_lib.ModelSpec) -> dict:
    """The frozen base: the `quant_targets` quantised with `spec.quant` (or unchanged)."""
    if spec.quant == "none":
        return params
    options: dict[str, Any] = {"block_size": spec.block_size}
    if spec.quant in ("nf4", "fp4"):
        options["double_quant"] = spec.double_quant
    return qtree.quantize_tree(params, qtree.match_any(quant_targets(spec)), spec.quant, **options)


def base_checkpoint(workdir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir) / "ckpt" / "base"


def quantized_base(config: config_lib.RunConfig, workdir: pathlib.Path) -> tuple[dict, Any, Any]:
    """(quantised base, full WhisperConfig, tokenizer): restored from `ckpt/base`, or quantised
    now and saved there once."""
    params, cfg, tokenizer = load_backbone(config.model, seed=config.seed, workdir=workdir)
    path = base_checkpoint(workdir)
    abstract = jax.eval_shape(lambda p: quantize(p, config.model), params)
    if path.exists():
        try:
            return checkpoint.restore(path, {"base": abstract})["base"], cfg, tokenizer
        except checkpoint.CorruptCheckpointError as e:
            warnings.warn(f"quantising again: {e}", checkpoint.CheckpointWarning, stacklevel=2)
            if jax.process_index() == 0:
                shutil.rmtree(path)
    base = quantize(params, config.model)
    checkpoint.save(path, {"base": base})
    return base, cfg, tokenizer


@dataclasses.dataclass(eq=False)
class Run:
    """What the stages share: config, folders, the placed base, the compiled-step inputs."""

    config: config_lib.RunConfig
    workdir: pathlib.Path
    mesh: jax.sharding.Mesh
    base: dict
    base_shardings: Any
    step_config: steps.StepConfig
    tokenizer: Any
    store: featurize.FeatureStore
    writer: metrics.MetricsWriter
    progress: bool = True
    updates: int = 0

    def tick(self) -> None:
        """Counts one training update; raises `SimulatedFailure` when the debug hook says so."""
        self.updates += 1
        limit = self.config.debug.fail_after_steps
        if limit and self.updates >= limit:
            raise SimulatedFailure(f"debug.fail_after_steps={limit} reached")

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


def check_workdir(config: config_lib.RunConfig, workdir: pathlib.Path) -> None:
    """Writes `config.json`, or checks that a resumed run uses the same configuration.

    Raises:
      ConfigError: the work folder holds a run with a different configuration.
    """
    path = workdir / "config.json"
    current = config_lib.to_dict(config)
    if path.is_file():
        previous = json.loads(path.read_text())
        diffs = _diff(
            {k: v for k, v in previous.items() if k not in _VOLATILE},
            {k: v for k, v in current.items() if k not in _VOLATILE},
        )
        if diffs:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with another configuration ({'; '.join(diffs[:5])}); "
                "use a new --workdir or the same config"
            )
    elif jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1))
        tmp.replace(path)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def setup(
    config: config_lib.RunConfig, workdir: str | pathlib.Path, *, progress: bool = True
) -> Run:
    """Mesh, quantised base (placed with its shardings), tokenizer, feature cache, metrics."""
    workdir = pathlib.Path(workdir)
    check_workdir(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    base, cfg, tokenizer = quantized_base(config, workdir)
    base, cfg = steps.window(base, cfg, config.model.audio_window_s)
    shardings = sharding.base_shardings(base, mesh, config.mesh)
    report = issues.InputReport()
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        base=sharding.put(base, shardings),
        base_shardings=shardings,
        step_config=_step_config(config, cfg),
        tokenizer=tokenizer,
        store=feature_store(config, workdir, cfg.n_mels, report),
        writer=metrics.MetricsWriter(workdir, enabled=jax.process_index() == 0),
        progress=progress,
    )


def feature_store(
    config: config_lib.RunConfig, workdir: pathlib.Path, n_mels: int, report: issues.InputReport
) -> featurize.FeatureStore:
    """The run's feature cache, `<workdir>/features` (the training window, the model's mel bins),
    shared by pretraining, the stages and the evaluation."""
    return featurize.FeatureStore(
        pathlib.Path(workdir) / "features",
        window_s=config.model.audio_window_s,
        n_mels=n_mels,
        report=report,
    )


def _step_config(config: config_lib.RunConfig, cfg: Any) -> steps.StepConfig:
    if config.model.name == "conformer":
        return pretrain.step_config(config, cfg, pretraining=False)
    return steps.StepConfig(model=cfg, dtype=config.model.dtype)


def pretrain_backbone(
    config: config_lib.RunConfig, workdir: pathlib.Path, *, progress: bool = True
) -> dict[str, Any]:
    """The `pretrain` stage: trains this run's Conformer into `<workdir>/pretrain` (resumably).

    Returns:
      the training info.
    """
    report = issues.InputReport()
    writer = metrics.MetricsWriter(workdir, enabled=jax.process_index() == 0)
    try:
        corpus = corpus_lib.build(config.data, workdir, report=report)
        vocab = pretrain.vocabulary(corpus)
        cfg = pretrain.model_config(config.model, vocab)
        run = Run(
            config=config,
            workdir=workdir,
            mesh=sharding.make_mesh(config.mesh),
            base={},
            base_shardings={},
            step_config=pretrain.step_config(config, cfg, pretraining=True),
            tokenizer=conformer_inputs.CharTokenizer(vocab),
            store=feature_store(config, workdir, cfg.n_mels, report),
            writer=writer,
            progress=progress,
        )
        writer.event("pretrain", vocab=list(vocab.tokens), corpus=corpus.summary())
        return pretrain.train(run, corpus, vocab)
    finally:
        writer.close()


def initial_adapters(run: Run) -> Any:
    """Stage-2 starting adapters (B = 0: the adapted model equals the base)."""
    key = jax.random.fold_in(jax.random.key(run.config.seed), KEY_LORA)
    return lora_lib.init(run.base, run.config.lora, key=key)


def run_pipeline(
    config: config_lib.RunConfig, workdir: str | pathlib.Path, *, progress: bool = True
) -> dict[str, Any]:
    """Runs (or resumes) [pretrain ->] quantise -> stage 2 -> stage 3 in `workdir`.

    Returns:
      a summary: {"stage2": info, "stage3": manifest} as written to disk.

    Raises:
      ConfigError: for a configuration that cannot run (named key).
      SimulatedFailure: from the `debug.fail_after_steps` hook.
    """
    workdir = pathlib.Path(workdir)
    pretrain.check_path(config.model)
    check_workdir(config, workdir)
    if pretrain.needed(config.model, workdir):
        pretrain_backbone(config, workdir, progress=progress)
    run = setup(config, workdir, progress=progress)
    try:
        run.writer.event("start", config=config_lib.to_dict(config))
        corpus = corpus_lib.build(config.data, run.workdir, report=run.store.report)
        run.writer.event("corpus", summary=corpus.summary())
        si_lora, info = stages.stage2(run, corpus, initial_adapters(run))
        manifest = stages.stage3(run, corpus, si_lora) if config.stage3.enabled else None
        run.writer.event("done", input_problems=run.store.report.summary())
    finally:
        run.writer.close()
    if jax.process_index() == 0:
        metrics.plot(run.workdir)
    return {"stage2": info, "stage3": manifest}


def host(tree: Any) -> Any:
    """numpy copy of a device pytree."""
    return jax.tree.map(np.asarray, jax.device_get(tree))
