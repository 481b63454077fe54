"""The checkpointed drivers of stage 2 (speaker-independent) and stage 3 (per speaker).

Both resume from their newest valid checkpoint. Everything a step consumes is a function of
saved state: adapters, optimiser state, the step number (batch order, learning rate, dropout
key) and, in stage 3, each slot's counters. A resumed run therefore ends with exactly the
adapters of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
import warnings
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import checkpoint, multihost, sharding
from pqm_jax.data import feature_store
from pqm_jax.quant import base as qbase
from pqm_jax.quant import tree as qtree
from pqm_jax.run import bank as bank_lib
from pqm_jax.run import config as config_lib
from pqm_jax.run import context
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.train import adapt, optim
from pqm_jax.train import examples as ex
from pqm_jax.train import steps as steps_lib

if TYPE_CHECKING:
    from pqm_jax.data import corpus as corpus_lib

_CHUNK_STEPS = 10**6  # stage-3 checkpoint number = chunk * _CHUNK_STEPS + step in chunk


def _put(run: context.Run, batch: dict, axis: int) -> dict:
    """A host batch onto the mesh, split over "data" along `axis`."""
    return sharding.global_batch(batch, sharding.tree_leading(batch, run.mesh, axis))


def _check_divisible(run: context.Run, name: str, size: int) -> None:
    d = run.mesh.shape[sharding.DATA]
    if size % d:
        raise config_lib.ConfigError(
            f"{name}={size} must be divisible by the mesh data axis ({d} devices); "
            "change it or set mesh.data"
        )


def _dev_accuracy(run, eval_fn, lora, dev: ex.Examples | None, batch: int) -> float:
    if dev is None:
        return float("nan")
    correct = tokens = 0.0
    for idx in ex.eval_batches(dev, batch):
        stats = sharding.to_host(eval_fn(lora, run.base, _put(run, ex.take_padded(dev, idx), 0)))
        correct += float(stats["correct"])
        tokens += float(stats["tokens"])
    return correct / max(tokens, 1.0)


class NonFiniteLoss(FloatingPointError):
    """Training diverged (NaN/inf loss); the last checkpoint before it is kept."""


def _check_loss(stage: str, step: int, loss: float, who: str = "") -> None:
    if not math.isfinite(loss):
        raise NonFiniteLoss(
            f"{stage} step {step}{who}: the loss is {loss}; stopped (the last checkpoint is "
            f"kept). Lower {stage}.optim.learning_rate, or check the weights and the data"
        )


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How `train_tree` runs: the stage's name (metrics, checkpoint folder), key purpose,
    batch sizes, evaluation and checkpoint cadence, optimiser, and length."""

    name: str
    purpose: int
    batch_size: int
    eval_batch_size: int
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    ckpt_every: int
    optim: optim.OptimConfig


def stage2(
    run: context.Run, corpus: corpus_lib.Corpus, init_lora: Any
) -> tuple[Any, dict[str, Any]]:
    """Speaker-independent adapters (selected by dev token accuracy), from `stage2/final` if
    already there; returns (adapters, info)."""
    final = run.workdir.stage2_final
    rep = sharding.tree_replicated(init_lora, run.mesh)
    if final.exists():
        try:
            out = checkpoint.restore(
                final, {"lora": sharding.abstract(init_lora, rep), "info": checkpoint.Json()}
            )
            return out["lora"], out["info"]
        except (checkpoint.CorruptCheckpointError, KeyError) as e:
            warnings.warn(
                f"training stage 2 again: {e}", checkpoint.CheckpointWarning, stacklevel=2
            )
            _remove(final)
    spec = run.config.stage2
    if not spec.enabled:
        info = {"trained": False, "steps": 0, "best_dev_accuracy": None}
        checkpoint.save(final, {"lora": init_lora, "info": checkpoint.Json(info)})
        return init_lora, info
    train = run.examples(corpus.si_train, desc="features stage 2")
    if train is None:
        raise config_lib.ConfigError(
            "stage2 is enabled but the speaker-independent pool is empty; configure it "
            "(data.si_root / data.si_speakers / data.si_voices) or set stage2.enabled=False"
        )
    dev = run.examples(corpus.si_dev, desc="features stage 2 dev")
    per_epoch = ex.steps_per_epoch(len(train), spec.batch_size)
    schedule = Schedule(
        name="stage2",
        purpose=context.KEY_STAGE2,
        batch_size=spec.batch_size,
        eval_batch_size=spec.eval_batch_size,
        total_steps=spec.steps or spec.epochs * per_epoch,
        steps_per_epoch=per_epoch,
        eval_every=spec.eval_every or per_epoch,
        ckpt_every=spec.ckpt_every,
        optim=spec.optim,
    )
    best, info = train_tree(run, init_lora, train, dev, schedule)
    checkpoint.save(final, {"lora": best, "info": checkpoint.Json(info)})
    checkpoint.Series(run.workdir.ckpt(schedule.name)).clear()
    return best, info


def train_tree(
    run: context.Run, init: Any, train: ex.Examples, dev: ex.Examples | None, sched: Schedule
) -> tuple[Any, dict[str, Any]]:
    """Trains the tree `init` (adapters, or the whole model when `run.step_config.trainable`
    is "backbone") on `train`, keeping the best by `dev` token accuracy; resumes from the
    newest checkpoint in ckpt/<name>. The caller saves the result and clears the series.

    Returns:
      (best tree, info: steps, best step and dev accuracy, utterance counts).
    """
    b, a = sched.batch_size, sched.optim.accumulate
    _check_divisible(run, f"{sched.name}.batch_size / optim.accumulate", b // a)
    _check_divisible(run, f"{sched.name}.eval_batch_size", sched.eval_batch_size)
    total, per_epoch, every = sched.total_steps, sched.steps_per_epoch, sched.eval_every
    key = run.key(sched.purpose)
    rep = sharding.tree_replicated(init, run.mesh)
    opt_state = optim.init(sched.optim, init)
    step_fn = steps_lib.jit_si_step(
        config=run.step_config,
        optimizer=sched.optim,
        steps_per_epoch=per_epoch,
        total_steps=total,
        mesh=run.mesh,
        lora=init,
        opt_state=opt_state,
        base_shardings=run.base_shardings,
    )
    eval_fn = steps_lib.jit_eval(
        config=run.step_config, mesh=run.mesh, lora=init, base_shardings=run.base_shardings
    )
    series = checkpoint.Series(run.workdir.ckpt(sched.name))
    opt_rep = sharding.tree_replicated(opt_state, run.mesh)
    targets = {
        "lora": sharding.abstract(init, rep),
        "opt_state": sharding.abstract(opt_state, opt_rep),
        "best": sharding.abstract(init, rep),
        "position": checkpoint.Json(),
    }
    restored = series.restore_latest(targets)
    if restored is not None:
        _, items = restored
        tree, opt_state, best = items["lora"], items["opt_state"], items["best"]
        pos = items["position"]
        step, best_acc, best_step = pos["step"], pos["best_dev_accuracy"], pos["best_step"]
    else:
        tree = best = sharding.put(init, rep)
        opt_state = sharding.put(opt_state, opt_rep)
        step, best_step = 0, 0
        best_acc = _dev_accuracy(run, eval_fn, tree, dev, sched.eval_batch_size)
        run.writer.write(sched.name, 0, {"dev_accuracy": best_acc})
    bar = run.bar(total=total, initial=step, desc=sched.name, unit="step")()
    seed = run.config.data.seed
    while step < total:
        batch = ex.batch_at(train, seed=seed, name=sched.name, step=step, batch=b)
        batch = _put(run, ex.micro(batch, a), 1)
        tree, opt_state, m = step_fn(tree, opt_state, run.base, batch, jnp.int32(step), key)
        step += 1
        m = {k: float(v) for k, v in sharding.to_host(m).items()}
        _check_loss(sched.name, step, m["loss"])
        run.writer.write(sched.name, step, m, epoch=(step - 1) // per_epoch)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.3f}", lr=f"{m['lr']:.1e}")
        run.tick()
        evaluate = step % every == 0 or step == total
        if evaluate:
            acc = _dev_accuracy(run, eval_fn, tree, dev, sched.eval_batch_size)
            if acc > best_acc or dev is None:
                best, best_acc, best_step = tree, acc, step
            run.writer.write(sched.name, step, {"dev_accuracy": acc}, best_step=best_step)
        if evaluate or (sched.ckpt_every and step % sched.ckpt_every == 0):
            pos = {"step": step, "best_dev_accuracy": best_acc, "best_step": best_step}
            items = {"lora": tree, "opt_state": opt_state, "best": best}
            series.save(step, items | {"position": checkpoint.Json(pos)})
    bar.close()
    info = {
        "trained": True,
        "steps": total,
        "best_step": best_step,
        "best_dev_accuracy": None if np.isnan(best_acc) else best_acc,
        "train_utterances": len(train),
        "dev_utterances": 0 if dev is None else len(dev),
    }
    return best, info


def speaker_data(run: context.Run, corpus: corpus_lib.Corpus) -> dict[str, adapt.SpeakerData]:
    """Each target speaker's adaptation and dev examples (speakers lacking either: left out),
    with their features on disk: `chunk_data` loads one chunk's into memory."""
    data = {}
    bar = run.bar(desc="features stage 3", unit="speaker")
    for s in bar(sorted(corpus.targets)):
        split = corpus.targets[s]
        # features are computed and cached now, loaded into memory chunk by chunk
        train = run.examples(split.adapt, desc=None, in_memory=False) if split.adapt else None
        dev = run.examples(split.dev, desc=None, in_memory=False) if split.dev else None
        if train is None or dev is None:
            warnings.warn(
                f"speaker {s}: no usable {'adaptation' if train is None else 'dev'} "
                "utterances; not adapted",
                feature_store.DataWarning,
                stacklevel=2,
            )
            continue
        data[s] = adapt.SpeakerData(train=train, dev=dev)
    return data


def chunk_data(data: dict[str, adapt.SpeakerData], chunk: tuple[str, ...]) -> dict:
    """The chunk's speakers with their features in memory (the other speakers' stay on disk)."""
    return {
        s: adapt.SpeakerData(train=data[s].train.in_memory(), dev=data[s].dev.in_memory())
        for s in chunk
    }


def chunk_speakers(
    run: context.Run,
    data: dict[str, adapt.SpeakerData],
    init_lora: Any,
    *,
    working: tuple[int, int] | None = None,
) -> int:
    """Speakers per chunk: `stage3.chunk_speakers`, else as many as `stage3.memory_budget_mb`
    holds. Each slot costs 4 copies of the adapters (the bank, two Adam moments, the best so
    far), the features of the largest speaker, and its share of the compiled update's working
    memory (activations, gradients); the update's shared working memory (e.g. the base
    dequantised) is paid once. Both come from XLA's memory analysis of the step compiled for
    8 and for 16 slots per device (`working` = (shared, per slot) bytes skips that). A
    function of the config, the data and the backend only, so a resumed run plans the same
    chunks."""
    spec = run.config.stage3
    if spec.chunk_speakers:
        return spec.chunk_speakers
    shared, per_slot_work = working if working is not None else _working(run, data, init_lora)
    adapters = 4 * qtree.tree_nbytes(init_lora)
    features = max(d.train.mel_bytes + d.dev.mel_bytes for d in data.values())
    per_slot = adapters + features + per_slot_work
    fits = (int(spec.memory_budget_mb * 2**20) - shared) // per_slot
    return max(1, min(len(data), fits))


def _temp_bytes(run: context.Run, data, init_lora: Any, slots: int) -> int | None:
    spec = run.config.stage3
    programs = adapt.compile_programs(
        lora=init_lora,
        config=run.step_config,
        optimizer=spec.optim,
        mesh=run.mesh,
        base_shardings=run.base_shardings,
        slots=slots,
    )
    one = chunk_data(data, tuple(sorted(data)[:1]))
    config = spec.adapt_config(run.config.data.seed)
    return adapt.step_temp_bytes(
        programs, init_lora, run.base, one, config=config, optimizer=spec.optim
    )


def _working(run: context.Run, data: dict[str, adapt.SpeakerData], init_lora: Any):
    """(shared, per slot) working bytes of the stage-3 update ((0, 0) when the backend does
    not report them). A few speakers: the one chunk's own program says it (all shared)."""
    d = run.mesh.shape[sharding.DATA]
    if len(data) <= 8 * d:
        temp = _temp_bytes(run, data, init_lora, -(-len(data) // d) * d)
        return (0, 0) if temp is None else (temp, 0)
    temps = [_temp_bytes(run, data, init_lora, k * d) for k in (8, 16)]
    if None in temps:  # XLA reuses buffers below a few slots: measure where it is linear
        return 0, 0
    per_slot = max(0, -(-(temps[1] - temps[0]) // (8 * d)))
    return max(0, temps[0] - 8 * d * per_slot), per_slot


def _remove(path: pathlib.Path) -> None:
    """Deletes a damaged result folder (process 0; the others wait) so it can be redone."""
    if multihost.primary() and path.exists():
        shutil.rmtree(path)
    multihost.barrier(f"removed {path}")


def _finished(run: context.Run, index: int, chunk: tuple[str, ...]) -> list[dict] | None:
    """Results of chunk `index` when its bank files are complete and hold these speakers."""
    if not run.workdir.chunk(index).exists():
        return None
    try:
        record = bank_lib.read_record(run.workdir, index)
    except bank_lib.DamagedChunk as e:
        warnings.warn(f"redoing chunk {index}: {e}", checkpoint.CheckpointWarning, stacklevel=2)
        _remove(run.workdir.chunk(index))
        return None
    if tuple(record["speakers"]) != chunk:
        raise RuntimeError(
            f"{run.workdir.chunk(index)} holds other speakers than planned; use a fresh workdir"
        )
    return record["results"]


def _open_manifest(run: context.Run, header: dict[str, Any]) -> dict[int, list[dict]]:
    """Chunks the manifest already lists ({index: rows}); starts it (or cuts a torn last
    line) when needed, so that appending continues a well-formed file."""
    paths = run.workdir
    lines = bank_lib.read_lines(paths)
    on_disk = paths.manifest.read_text() if paths.manifest.is_file() else ""
    if not lines or lines[0] != header:
        bank_lib.write_lines(paths, [header])
        return {}
    if on_disk.count("\n") != len(lines):  # a line cut short by a kill
        bank_lib.write_lines(paths, lines)
    return {r["chunk"]: r["speakers"] for r in lines[1:] if "chunk" in r}


def stage3(run: context.Run, corpus: corpus_lib.Corpus, init_lora: Any) -> dict[str, Any]:
    """Adapts every target speaker (vmapped chunks); returns the manifest it writes."""
    data = speaker_data(run, corpus)
    if not data:
        raise config_lib.ConfigError("stage3: no target speaker has adaptation and dev data")
    return adapt_speakers(run, data, init_lora)


def adapt_speakers(
    run: context.Run, data: dict[str, adapt.SpeakerData], init_lora: Any
) -> dict[str, Any]:
    """Stage 3 over `data` (features may stay on disk: each chunk loads its own when it
    starts): chunks of `chunk_speakers`, each written to the bank when done; resumes."""
    run = with_stage3_base(run)
    spec = run.config.stage3
    config = spec.adapt_config(run.config.data.seed)
    config = dataclasses.replace(config, chunk_speakers=chunk_speakers(run, data, init_lora))
    slots = adapt.slots_for(config, len(data), run.mesh)
    programs = adapt.compile_programs(
        lora=init_lora,
        config=run.step_config,
        optimizer=spec.optim,
        mesh=run.mesh,
        base_shardings=run.base_shardings,
        slots=slots,
    )
    plan = adapt.chunk_plan(data, config, spec.optim, slots)
    key = run.key(context.KEY_STAGE3)
    series = checkpoint.Series(run.workdir.ckpt("stage3"))
    speakers_bar = run.bar(total=len(data), desc="stage 3 speakers", unit="speaker")()
    header = {
        "header": True,
        "format": bank_lib.FORMAT,
        "audio_window_s": run.config.model.audio_window_s,
        "slots": slots,
        "chunks": [workdir_lib.chunk_name(i) for i in range(len(plan))],
    }
    listed = _open_manifest(run, header)
    appended = False
    for index, chunk in enumerate(plan):
        rows = _finished(run, index, chunk)
        if rows is None:
            mem = chunk_data(data, chunk)
            rows = _run_chunk(run, index, chunk, init_lora, mem, series, programs, config, key)
            del mem
        if listed.get(index) != rows:
            bank_lib.append_line(run.workdir, {"chunk": index, "speakers": rows})
            appended = True
        speakers_bar.update(len(chunk))
    speakers_bar.close()
    lines = bank_lib.read_lines(run.workdir)
    if appended or not lines[-1].get("complete"):
        bank_lib.append_line(run.workdir, {"complete": True})
    multihost.barrier("pqm-stage3-manifest")
    return bank_lib.manifest(bank_lib.read_lines(run.workdir))


def dense_base_wanted(spec: config_lib.Stage3Spec, base: dict, dtype: str) -> bool:
    """Whether stage 3 trains on a dense copy of the base (`stage3.dense_base`)."""
    if spec.dense_base != "auto" or not any(qbase.is_quantized(x) for x in _leaves(base)):
        return spec.dense_base == "on"
    dense = jax.eval_shape(lambda b: qtree.dequantize_tree(b, dtype), base)
    return qtree.tree_nbytes(dense) <= spec.memory_budget_mb * 2**20 / 4


def with_stage3_base(run: context.Run) -> context.Run:
    """`run` with the base stage 3 reads: the quantised one, or its dense copy (decoded once,
    in the compute dtype, placed with the shardings of dense arrays); see `stage3.dense_base`.
    The copy holds the very values each update would decode, so the adapters do not change."""
    dtype = run.step_config.dtype
    if not dense_base_wanted(run.config.stage3, run.base, dtype):
        return run
    abstract = jax.eval_shape(lambda b: qtree.dequantize_tree(b, dtype), run.base)
    shardings = sharding.base_shardings(abstract, run.mesh, run.mesh_config)
    decode = sharding.jit(
        lambda b: qtree.dequantize_tree(b, dtype),
        in_shardings=(run.base_shardings,),
        out_shardings=shardings,
    )
    return dataclasses.replace(run, base=decode(run.base), base_shardings=shardings)


def _leaves(tree: Any) -> list:
    return jax.tree.leaves(tree, is_leaf=qbase.is_quantized)


def _chunk_targets(programs: adapt.Programs, init_lora: Any) -> dict[str, Any]:
    c, mesh = programs.slots, programs.mesh
    bank = jax.tree.map(lambda x: jax.ShapeDtypeStruct((c, *np.shape(x)), x.dtype), init_lora)
    opt = jax.eval_shape(programs.init_opt, bank)
    tracker = {
        k: np.zeros(c, np.float64 if k in ("start_acc", "best_acc") else np.int64)
        for k in adapt.TRACKED
    }
    return {
        "bank": sharding.abstract(bank, sharding.tree_leading(bank, mesh)),
        "opt_state": sharding.abstract(opt, sharding.tree_leading(opt, mesh)),
        "best": sharding.abstract(bank, sharding.tree_leading(bank, mesh)),
        "tracker": tracker,
        "meta": checkpoint.Json(),
    }


def _run_chunk(run, index, chunk, init_lora, data, series, programs, config, key) -> list[dict]:
    spec = run.config.stage3
    state = None
    restored = series.restore_latest(_chunk_targets(programs, init_lora))
    if restored is not None:
        _, items = restored
        meta = items["meta"]
        if meta["chunk"] == index and tuple(meta["speakers"]) == chunk:
            state = adapt.ChunkState(
                index, chunk, items["bank"], items["opt_state"], items["best"], items["tracker"]
            )
    if state is None:
        state = adapt.init_chunk(index, chunk, init_lora, data, config=config, programs=programs)
    t = state.tracker
    total = int(t["total"].max())
    bar = run.bar(total=total, initial=int(t["step"].max()), desc=f"stage 3 chunk {index}")()

    def after_step(state: adapt.ChunkState, m: dict[str, np.ndarray]) -> None:
        chunk_step = int(state.tracker["step"].max())
        trained = m["trained"].astype(bool)
        loss = float(np.mean(m["loss"][trained])) if trained.any() else float("nan")
        diverged = np.flatnonzero(trained & ~np.isfinite(m["loss"]))
        bad = [state.speakers[i] for i in diverged if i < len(state.speakers)]
        if bad:
            _check_loss("stage3", chunk_step, float("nan"), f" (speakers {', '.join(bad)})")
        run.writer.write(
            "stage3",
            index * _CHUNK_STEPS + chunk_step,
            {"loss": loss, "active": int(state.tracker["active"].sum())},
            chunk=index,
            chunk_step=chunk_step,
        )
        for i in np.flatnonzero(m["evaluated"]):
            run.writer.write(
                "stage3/" + state.speakers[i],
                int(state.tracker["step"][i]),
                {"dev_accuracy": float(m["dev_accuracy"][i]), "loss": float(m["loss"][i])},
            )
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", active=int(state.tracker["active"].sum()))
        run.tick()
        if spec.ckpt_every and chunk_step % spec.ckpt_every == 0 and state.tracker["active"].any():
            _save_chunk(series, state, chunk_step)

    adapt.run_chunk(
        state,
        run.base,
        data,
        key,
        config=config,
        optimizer=spec.optim,
        programs=programs,
        after_step=after_step,
    )
    bar.close()
    rows = [r.__dict__ for r in adapt.results(state, config)]
    best = sharding.to_host(state.best)
    flat = bank_lib.flatten(best, len(chunk))
    bank_lib.write_chunk(run.workdir, index, flat, chunk, rows, init_lora)
    series.clear()
    run.writer.event("chunk", index=index, results=rows)
    return rows


def _save_chunk(series: checkpoint.Series, state: adapt.ChunkState, chunk_step: int) -> None:
    meta = {"chunk": state.index, "speakers": list(state.speakers), "chunk_step": chunk_step}
    items = {
        "bank": state.bank,
        "opt_state": state.opt_state,
        "best": state.best,
        "tracker": state.tracker,
        "meta": checkpoint.Json(meta),
    }
    series.save(state.index * _CHUNK_STEPS + chunk_step, items)
