"""[pretrain ->] quantise -> stage 2 -> stage 3, resumable from any point: the library behind
`train.py`.

A run lives in one work folder (its layout: `pqm_jax.run.workdir`). `run_pipeline` skips
whatever is already complete and resumes the rest from its newest valid checkpoint;
`results.load` reads the outcome back. Nothing here knows which model family runs: the
family of `model.name` (`pqm_jax.models`) loads, cuts and trains it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
from typing import Any

import jax

from pqm_jax import lora as lora_lib
from pqm_jax import multihost, sharding
from pqm_jax.data import corpus as corpus_lib
from pqm_jax.run import backbone, context, metrics, pretrain, stages
from pqm_jax.run import config as config_lib
from pqm_jax.run import workdir as workdir_lib

SimulatedFailure = context.SimulatedFailure
# Differences that do not change what a run computes (allowed between attempts).
_VOLATILE = ("debug", "distributed")


def init_distributed(spec: config_lib.DistributedSpec) -> None:
    """`jax.distributed.initialize` for a multi-process run; call before any other JAX use.

    CPU collectives go through gloo. A coordinator on a loopback address (127.0.0.1:PORT, one
    machine) is also bound there, and gloo's own connections use 127.0.0.1 too: nothing of
    such a run leaves the machine."""
    if not spec.enabled or jax.distributed.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "initialization_timeout": spec.timeout_s,
        "heartbeat_timeout_seconds": max(10, spec.timeout_s // 4),
        "shutdown_timeout_seconds": spec.timeout_s,
    }
    if spec.coordinator_address:
        kwargs["coordinator_address"] = spec.coordinator_address
        host = spec.coordinator_address.rpartition(":")[0].strip("[]")
        if host in ("127.0.0.1", "localhost", "::1"):
            kwargs["coordinator_bind_address"] = spec.coordinator_address
            _loopback_gloo()
    if spec.num_processes:
        kwargs["num_processes"] = spec.num_processes
    if spec.process_id >= 0:
        kwargs["process_id"] = spec.process_id
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    multihost.start_watchdog(spec.timeout_s)


def _loopback_gloo() -> None:
    """Makes JAX's gloo CPU collectives connect over 127.0.0.1 (by default gloo uses the
    address of the machine's hostname)."""
    from jax._src import xla_bridge

    make = xla_bridge._jax.make_gloo_tcp_collectives
    if getattr(make, "pqm_loopback", False):
        return

    def loopback(*, distributed_client, hostname=None, interface=None):
        return make(distributed_client=distributed_client, hostname=hostname or "127.0.0.1")

    loopback.pqm_loopback = True
    xla_bridge._jax.make_gloo_tcp_collectives = loopback


def check_workdir(config: config_lib.RunConfig, workdir: str | os.PathLike) -> None:
    """Writes `config.json`, or checks that a resumed run uses the same configuration (a
    folder whose run failed before training, e.g. on a late config error, is taken over).
    With several processes, process 0 decides and writes; the others then check.

    Raises:
      ConfigError: the work folder holds a run with a different configuration that trained.
    """
    if jax.process_count() == 1:
        return _check_workdir(config, workdir)
    error = None
    if multihost.primary():
        try:
            _check_workdir(config, workdir)
        except config_lib.ConfigError as e:
            error = e
    multihost.barrier("pqm-config")
    if not multihost.primary():
        _check_workdir(config, workdir)
    if error is not None:
        raise error


def _check_workdir(config: config_lib.RunConfig, workdir: str | os.PathLike) -> None:
    wd = workdir_lib.Workdir.of(workdir)
    current = config_lib.to_dict(config)
    if wd.config.is_file():
        previous = workdir_lib.read_config(wd)
        diffs = _diff(
            {k: v for k, v in previous.items() if k not in _VOLATILE},
            {k: v for k, v in current.items() if k not in _VOLATILE},
        )
        if diffs and wd.started():
            raise config_lib.ConfigError(
                f"{wd.root} holds a run with another configuration ({'; '.join(diffs[:5])}); "
                "use a new --workdir or the same config"
            )
        if not diffs:
            return
        # A configuration that never trained does not own the folder: take it over, and drop
        # the quantised base it may have cached (it may belong to another model).
        if jax.process_index() == 0 and wd.ckpt("base").exists():
            shutil.rmtree(wd.ckpt("base"))
    if jax.process_index() == 0:
        wd.root.mkdir(parents=True, exist_ok=True)
        tmp = wd.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=1))
        tmp.replace(wd.config)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def setup(
    config: config_lib.RunConfig, workdir: str | os.PathLike, *, progress: bool = True
) -> context.Run:
    """Mesh, quantised base (placed with its shardings), tokenizer, feature cache, metrics."""
    wd = workdir_lib.Workdir.of(workdir)
    check_workdir(config, wd)
    family = config.model.family
    mesh_config = config.mesh.with_rules(family.shard_rules)
    mesh = sharding.make_mesh(mesh_config)
    base, cfg, tokenizer = backbone.quantized(config, wd)
    base, cfg = family.window(base, cfg, config.model.audio_window_s)
    shardings = sharding.base_shardings(base, mesh, mesh_config)
    return context.Run(
        config=config,
        workdir=wd,
        mesh=mesh,
        mesh_config=mesh_config,
        base=sharding.put(base, shardings),
        base_shardings=shardings,
        step_config=context.step_config(config, cfg, pretraining=False),
        tokenizer=tokenizer,
        store=context.store(config, wd, cfg.n_mels, context.input_report(config)),
        writer=metrics.MetricsWriter(wd, enabled=jax.process_index() == 0),
        progress=progress,
    )


def initial_adapters(run: context.Run) -> Any:
    """Stage-2 starting adapters (B = 0: the adapted model equals the base)."""
    key = run.key(context.KEY_LORA)
    return lora_lib.init(run.base, context.lora_config(run.config), key=key)


def build_corpus(
    config: config_lib.RunConfig, wd: workdir_lib.Workdir, report: Any
) -> corpus_lib.Corpus:
    """The run's corpus. With several processes, process 0 renders and lists it first, the
    others then list what it wrote (no file is written by two processes)."""
    if jax.process_count() == 1:
        return corpus_lib.build(config.data, wd.data, report=report)
    corpus = corpus_lib.build(config.data, wd.data, report=report) if multihost.primary() else None
    multihost.barrier("pqm-corpus")
    return corpus if corpus is not None else corpus_lib.build(config.data, wd.data, report=report)


def run_pipeline(
    config: config_lib.RunConfig, workdir: str | pathlib.Path, *, progress: bool = True
) -> dict[str, Any]:
    """Runs (or resumes) [pretrain ->] quantise -> stage 2 -> stage 3 in `workdir`.

    Returns:
      a summary: {"stage2": info, "stage3": manifest} as written to disk, and
      "input_problems" (the bad input items found, `InputReport.summary`).

    Raises:
      ConfigError: for a configuration that cannot run (named key).
      SimulatedFailure: from the `debug.fail_after_steps` hook.
      WorkdirLocked: another process is running on `workdir`.
    """
    wd = workdir_lib.Workdir.of(workdir)
    pretrain.check_path(config.model)
    try:  # a mesh the devices cannot hold fails before anything is written
        sharding.make_mesh(config.mesh)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    holder = workdir_lib.lock(wd) if jax.process_index() == 0 else contextlib.nullcontext()
    with holder:
        return _run(config, wd, progress=progress)


def _run(config: config_lib.RunConfig, wd: workdir_lib.Workdir, *, progress: bool) -> dict:
    check_workdir(config, wd)
    if pretrain.needed(config, wd):
        pretrain.train(config, wd, progress=progress)
    run = setup(config, wd, progress=progress)
    try:
        run.writer.event("start", config=config_lib.to_dict(config))
        corpus = build_corpus(config, wd, run.store.report)
        run.writer.event("corpus", summary=corpus.summary())
        si_lora, info = stages.stage2(run, corpus, initial_adapters(run))
        manifest = stages.stage3(run, corpus, si_lora) if config.stage3.enabled else None
        run.writer.event("done", input_problems=run.store.report.summary())
    finally:
        run.writer.close()
    if jax.process_index() == 0:
        metrics.plot(wd)
    return {"stage2": info, "stage3": manifest, "input_problems": run.store.report.summary()}
