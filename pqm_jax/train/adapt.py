"""Stage 3: per-speaker adaptation of many speakers by one compiled, vmapped program.

The adapters of C speakers are stacked along a leading slot axis (a bank); every slot starts
from the same stage-2 adapters and trains on its own speaker's batches. One jitted step
`vmap`s the single-speaker update over slots, with the frozen base passed once (in_axes None:
shared, never copied) and the slot axis split over the mesh's "data" axis. Speakers beyond
C are processed in chunks, sorted by their number of steps so chunk mates finish together.

Per slot, on the host: its own step count (hence its own learning-rate schedule position and
epoch length), dev evaluations at its own epoch ends (or every `eval_every` steps), its best
adapters by dev token accuracy (kept on device in a second bank), early stopping after
`patience` evaluations without improvement. A stopped or finished slot is masked: its
adapters and optimiser state no longer change. Dropout keys are folded from the speaker's
name and its own step, so a speaker's result does not depend on its chunk mates.

A bank of one slot on one CPU device multiplies the step's few decoder rows by the 4-bit base
with the native kernel (`quant.native.matvec`, forward and gradient products), which reads the
codes instead of decoding the base into float32 at every step; many slots keep XLA's product,
which merges their rows into one large matrix product.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import jit_cache, sharding
from pqm_jax.quant.native import matvec
from pqm_jax.train import examples as ex
from pqm_jax.train import optim, steps

TRACKED = (
    "step",
    "total",
    "per_epoch",
    "every",
    "start_acc",
    "best_acc",
    "best_step",
    "bad",
    "active",
)
_FLOATS = ("start_acc", "best_acc")


@dataclasses.dataclass(frozen=True)
class AdaptSchedule:
    """Stage-3 schedule (the run configuration's `stage3` section holds these fields).

    Attributes:
      epochs: passes over each speaker's adaptation data (its own epoch length).
      batch_size: examples per update per speaker (split into `optimizer.accumulate` micro-batches).
      eval_batch_size: dev examples per slot per evaluation batch.
      eval_every: evaluate a speaker every this many of its steps; 0 = at its epoch ends.
      patience: stop a speaker after this many evaluations without improvement; 0 = never.
      chunk_speakers: slots per compiled program (rounded up to the "data" axis); 0 = all (a
        run picks a number from its memory budget, `stage3.memory_budget_mb`).
    """

    epochs: int = 10
    batch_size: int = 8
    eval_batch_size: int = 8
    eval_every: int = 0
    patience: int = 0
    chunk_speakers: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("stage 3 needs epochs, batch_size and eval_batch_size >= 1")
        if self.eval_every < 0 or self.patience < 0 or self.chunk_speakers < 0:
            raise ValueError("eval_every, patience and chunk_speakers must be >= 0")


@dataclasses.dataclass(frozen=True)
class AdaptConfig(AdaptSchedule):
    """A stage-3 schedule and its batch-order seed."""

    seed: int = 0

    @classmethod
    def from_schedule(cls, schedule: AdaptSchedule, *, seed: int) -> AdaptConfig:
        """The schedule fields of `schedule` (any `AdaptSchedule` subclass) with `seed`."""
        names = [f.name for f in dataclasses.fields(AdaptSchedule)]
        return cls(**{n: getattr(schedule, n) for n in names}, seed=seed)


@dataclasses.dataclass(frozen=True, eq=False)
class SpeakerData:
    """One speaker's adaptation (train) and dev examples."""

    train: ex.Examples
    dev: ex.Examples


@dataclasses.dataclass(eq=False)
class ChunkState:
    """Everything needed to continue a chunk: device banks and host bookkeeping.

    bank, opt_state, best: pytrees with a leading slot axis [C, ...]; tracker: {name: [C]}
    numpy arrays (see `TRACKED`); speakers: the real speakers in slot order (len <= C).
    """

    index: int
    speakers: tuple[str, ...]
    bank: Any
    opt_state: Any
    best: Any
    tracker: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SpeakerResult:
    """How one speaker's adaptation ended."""

    speaker: str
    start_dev_accuracy: float
    best_dev_accuracy: float
    best_step: int
    steps: int
    stopped_early: bool


def speaker_seed(name: str) -> int:
    """A stable 31-bit integer per speaker name (folded into the dropout key)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def speaker_update(
    lora: Any,
    opt_state: Any,
    base: dict,
    batch: dict,
    step: jax.Array,
    per_epoch: jax.Array,
    total: jax.Array,
    active: jax.Array,
    seed: jax.Array,
    key: jax.Array,
    *,
    config: steps.StepConfig,
    optimizer: optim.OptimConfig,
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One speaker's update; an inactive speaker keeps its adapters and optimiser state.

    Args:
      batch: [A, B, ...] this speaker's micro-batches.
      step, per_epoch, total: its updates so far, epoch length and run length (int32 []).
      active: bool []; seed: int32 [] from `speaker_seed`; key: the stage's dropout key.
    """
    rng = steps.step_key(jax.random.fold_in(key, seed), step)
    new_lora, new_opt, metrics = steps.update(
        lora,
        opt_state,
        base,
        batch,
        step,
        config=config,
        optimizer=optimizer,
        rng=rng,
        steps_per_epoch=per_epoch,
        total_steps=total,
    )

    def keep(new, old):
        return jnp.where(active, new, old)

    return jax.tree.map(keep, new_lora, lora), jax.tree.map(keep, new_opt, opt_state), metrics


def _select(best: Any, bank: Any, improved: jax.Array) -> Any:
    def pick(b, cur):
        mask = improved.reshape(improved.shape + (1,) * (cur.ndim - 1))
        return jnp.where(mask, cur, b)

    return jax.tree.map(pick, best, bank)


@dataclasses.dataclass(frozen=True, eq=False)
class Programs:
    """The compiled pieces of one stage-3 run (shared by every chunk)."""

    step: Callable
    evaluate: Callable
    select: Callable
    init_opt: Callable
    slots: int
    vmapped: bool
    mesh: jax.sharding.Mesh | None


def compile_programs(
    *,
    lora: Any,
    config: steps.StepConfig,
    optimizer: optim.OptimConfig,
    mesh: jax.sharding.Mesh,
    base_shardings: Any,
    slots: int,
) -> Programs:
    """Jitted, vmapped step / dev evaluation / best selection for banks of `slots` speakers,
    with explicit shardings: slot axis over "data", base per `base_shardings`. Cached per
    process (see `jit_cache.cached`)."""
    key = ("adapt", config, optimizer, mesh, slots)
    key += (jit_cache.tree_key(lora), jit_cache.tree_key(base_shardings))
    return jit_cache.cached(
        key, lambda: _compile(lora, config, optimizer, mesh, base_shardings, slots)
    )


def _kernel_base(base: dict, slots: int) -> dict:
    """The base as the step sees it: with one slot, its 4-bit weights marked for the native
    kernel (up to `matvec.TRAIN_ROWS` rows a product; unchanged where the kernel does not run).
    Under vmap the kernel runs once per slot, where XLA would merge the slots' rows into one
    product. Timed alone on 2 CPU cores (tied embedding, forward and gradient): 32 rows 19 ms
    with the kernel against 27 ms decoded; two slots would be about even (2 x 19 against 43 ms
    for 64 merged rows; not measured in the step), so only one slot uses it."""
    return matvec.stream_tree(base, matvec.TRAIN_ROWS) if slots == 1 else base


def _compile(lora, config, optimizer, mesh, base_shardings, slots) -> Programs:
    def fn(lora, opt, base, *rest):
        base = _kernel_base(base, slots)
        return speaker_update(lora, opt, base, *rest, config=config, optimizer=optimizer)

    def stats(lora, base, batch):
        return steps.token_stats(lora, _kernel_base(base, slots), batch, config=config, rng=None)

    vstep = jax.vmap(fn, in_axes=(0, 0, None, 0, 0, 0, 0, 0, 0, None))
    veval = jax.vmap(stats, in_axes=(0, None, 0))
    bank = jax.tree.map(lambda x: jax.ShapeDtypeStruct((slots, *np.shape(x)), x.dtype), lora)
    opt = jax.eval_shape(jax.vmap(functools.partial(optim.init, optimizer)), bank)
    bank_s = sharding.tree_leading(bank, mesh)
    opt_s = sharding.tree_leading(opt, mesh)
    vec = sharding.leading(mesh)
    rep = sharding.replicated(mesh)
    return Programs(
        step=sharding.jit(
            vstep,
            in_shardings=(bank_s, opt_s, base_shardings, vec, vec, vec, vec, vec, vec, rep),
            out_shardings=(bank_s, opt_s, vec),
        ),
        evaluate=sharding.jit(veval, in_shardings=(bank_s, base_shardings, vec), out_shardings=vec),
        select=sharding.jit(_select, in_shardings=(bank_s, bank_s, vec), out_shardings=bank_s),
        init_opt=sharding.jit(
            jax.vmap(functools.partial(optim.init, optimizer)),
            in_shardings=(bank_s,),
            out_shardings=opt_s,
        ),
        slots=slots,
        vmapped=True,
        mesh=mesh,
    )


def compile_single(*, config: steps.StepConfig, optimizer: optim.OptimConfig) -> Programs:
    """The same pieces for one speaker at a time (no vmap): the loop baseline of the benchmark."""
    fn = functools.partial(speaker_update, config=config, optimizer=optimizer)
    stats = functools.partial(steps.token_stats, config=config, rng=None)

    def one(f):  # slot axis of size 1 in and out, so the host loop is shared
        return lambda *a: jax.tree.map(lambda x: x[None], f(*a))

    def squeeze(tree):
        return jax.tree.map(lambda x: x[0], tree)

    step1 = jax.jit(fn)
    eval1 = jax.jit(stats)
    return Programs(
        step=lambda lo, o, b, bt, *v: jax.tree.map(
            lambda x: x[None],
            step1(squeeze(lo), squeeze(o), b, squeeze(bt), *[x[0] for x in v[:-1]], v[-1]),
        ),
        evaluate=lambda lo, b, bt: one(eval1)(squeeze(lo), b, squeeze(bt)),
        select=jax.jit(_select),
        init_opt=jax.jit(jax.vmap(functools.partial(optim.init, optimizer))),
        slots=1,
        vmapped=False,
        mesh=None,
    )


def chunk_plan(
    data: Mapping[str, SpeakerData], config: AdaptConfig, optimizer: optim.OptimConfig, slots: int
) -> list[tuple[str, ...]]:
    """Speakers grouped into chunks of <= `slots`, sorted by (steps, name)."""
    del optimizer
    order = sorted(data, key=lambda s: (total_steps(len(data[s].train), config), s))
    return [tuple(order[i : i + slots]) for i in range(0, len(order), slots)]


def total_steps(n_train: int, config: AdaptConfig) -> int:
    return config.epochs * ex.steps_per_epoch(n_train, config.batch_size)


def init_chunk(
    index: int,
    speakers: tuple[str, ...],
    init_lora: Any,
    data: Mapping[str, SpeakerData],
    *,
    config: AdaptConfig,
    programs: Programs,
) -> ChunkState:
    """A fresh chunk: every slot holds `init_lora`; padded slots are inactive from the start."""
    c = programs.slots
    bank = jax.tree.map(lambda x: jnp.broadcast_to(x, (c, *x.shape)), init_lora)
    if programs.mesh is not None:
        bank = sharding.put(bank, sharding.tree_leading(bank, programs.mesh))
    tracker = {k: np.zeros(c, np.float64 if k in _FLOATS else np.int64) for k in TRACKED}
    tracker["best_acc"][:] = -1.0
    tracker["start_acc"][:] = np.nan
    for i, s in enumerate(speakers):
        n = len(data[s].train)
        tracker["per_epoch"][i] = ex.steps_per_epoch(n, config.batch_size)
        tracker["total"][i] = total_steps(n, config)
        tracker["every"][i] = config.eval_every or tracker["per_epoch"][i]
        tracker["active"][i] = 1
    opt_state = programs.init_opt(bank)
    return ChunkState(index, tuple(speakers), bank, opt_state, bank, tracker)


def _slot_batches(state: ChunkState, data, config: AdaptConfig, accumulate: int) -> dict:
    rows = []
    t = state.tracker
    for i in range(len(t["step"])):
        if i < len(state.speakers) and t["active"][i]:
            s = state.speakers[i]
            batch = ex.batch_at(
                data[s].train,
                seed=config.seed,
                name=s,
                step=int(t["step"][i]),
                batch=config.batch_size,
            )
        else:  # a stopped, finished or padded slot: masked in the step anyway
            s = state.speakers[min(i, len(state.speakers) - 1)]
            batch = data[s].train.filler(config.batch_size)
        rows.append(ex.micro(batch, accumulate))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def evaluate(state: ChunkState, bank: Any, base: dict, data, *, config, programs) -> np.ndarray:
    """Dev token accuracy per slot [C] (NaN for padded slots)."""
    c = programs.slots
    sizes = [len(data[s].dev) for s in state.speakers]
    n_batches = -(-max(sizes) // config.eval_batch_size)
    correct, tokens = np.zeros(c), np.zeros(c)
    for k in range(n_batches):
        rows = []
        for i in range(c):
            dev = data[state.speakers[min(i, len(state.speakers) - 1)]].dev
            idx = np.arange(k * config.eval_batch_size, (k + 1) * config.eval_batch_size)
            idx = np.where((idx < len(dev)) & (i < len(state.speakers)), idx, -1)
            rows.append(ex.take_padded(dev, idx))
        batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
        stats = sharding.to_host(programs.evaluate(bank, base, batch))
        correct += stats["correct"]
        tokens += stats["tokens"]
    acc = correct / np.maximum(tokens, 1.0)
    acc[len(state.speakers) :] = np.nan
    return acc


def _record_eval(state: ChunkState, acc: np.ndarray, due: np.ndarray, programs, config) -> None:
    t = state.tracker
    improved = due & (acc > t["best_acc"])
    if improved.any():
        state.best = programs.select(state.best, state.bank, improved)
    t["best_acc"] = np.where(improved, acc, t["best_acc"])
    t["best_step"] = np.where(improved, t["step"], t["best_step"])
    t["bad"] = np.where(due, np.where(improved, 0, t["bad"] + 1), t["bad"])
    finished = t["step"] >= t["total"]
    stopped = (config.patience > 0) & (t["bad"] >= config.patience)
    t["active"] = np.where(due & (finished | stopped), 0, t["active"])


def start(state: ChunkState, base: dict, data, *, config: AdaptConfig, programs) -> None:
    """Dev accuracy of the starting adapters: the baseline every speaker must beat."""
    acc = evaluate(state, state.bank, base, data, config=config, programs=programs)
    due = state.tracker["active"].astype(bool)
    state.tracker["best_acc"] = np.where(due, acc, state.tracker["best_acc"])
    state.tracker["start_acc"] = np.where(due, acc, np.nan)
    state.best = state.bank


def advance(
    state: ChunkState,
    base: dict,
    data: Mapping[str, SpeakerData],
    key: jax.Array,
    *,
    config: AdaptConfig,
    optimizer: optim.OptimConfig,
    programs: Programs,
) -> dict[str, np.ndarray]:
    """One vmapped update of every active slot, then the dev evaluations that fall due.

    Returns host metrics {loss, accuracy, lr: [C], evaluated: bool [C], dev_accuracy: [C]}.
    """
    t = state.tracker
    batch = _slot_batches(state, data, config, optimizer.accumulate)
    seeds = np.zeros(programs.slots, np.int32)
    seeds[: len(state.speakers)] = [speaker_seed(s) for s in state.speakers]
    vec = [t["step"], t["per_epoch"], t["total"]]
    vec = [np.asarray(v, np.int32) for v in vec] + [t["active"].astype(bool), seeds]
    state.bank, state.opt_state, metrics = programs.step(
        state.bank, state.opt_state, base, batch, *vec, key
    )
    was_active = t["active"].astype(bool)
    t["step"] = t["step"] + was_active
    due = was_active & ((t["step"] % np.maximum(t["every"], 1) == 0) | (t["step"] >= t["total"]))
    acc = np.full(programs.slots, np.nan)
    if due.any():
        acc = evaluate(state, state.bank, base, data, config=config, programs=programs)
        _record_eval(state, acc, due, programs, config)
    out = {k: np.asarray(v) for k, v in sharding.to_host(metrics).items()}
    return out | {"trained": was_active, "evaluated": due, "dev_accuracy": acc}


def results(state: ChunkState, config: AdaptConfig) -> list[SpeakerResult]:
    """Per-speaker outcome of a finished chunk."""
    t = state.tracker
    out = []
    for i, s in enumerate(state.speakers):
        out.append(
            SpeakerResult(
                speaker=s,
                start_dev_accuracy=float(t["start_acc"][i]),
                best_dev_accuracy=float(t["best_acc"][i]),
                best_step=int(t["best_step"][i]),
                steps=int(t["step"][i]),
                stopped_early=bool(t["step"][i] < t["total"][i]),
            )
        )
    del config
    return out


def run_chunk(
    state: ChunkState,
    base: dict,
    data: Mapping[str, SpeakerData],
    key: jax.Array,
    *,
    config: AdaptConfig,
    optimizer: optim.OptimConfig,
    programs: Programs,
    after_step: Callable[[ChunkState, dict], None] | None = None,
) -> ChunkState:
    """Advances `state` until every slot has stopped; `after_step(state, metrics)` runs after
    each update (progress, metrics, checkpoints)."""
    if state.tracker["best_acc"][: len(state.speakers)].max() < 0:  # fresh chunk
        start(state, base, data, config=config, programs=programs)
    while state.tracker["active"].any():
        metrics = advance(
            state, base, data, key, config=config, optimizer=optimizer, programs=programs
        )
        if after_step is not None:
            after_step(state, metrics)
    return state


def adapt(
    init_lora: Any,
    base: dict,
    data: Mapping[str, SpeakerData],
    key: jax.Array,
    *,
    config: AdaptConfig,
    optimizer: optim.OptimConfig,
    programs: Programs,
) -> tuple[dict[str, Any], list[SpeakerResult]]:
    """Adapts every speaker of `data` (in-memory, no checkpoints): ({speaker: best adapters},
    results). The pipeline's checkpointed driver is `pipeline.stage3`."""
    best: dict[str, Any] = {}
    out: list[SpeakerResult] = []
    for index, chunk in enumerate(chunk_plan(data, config, optimizer, programs.slots)):
        state = init_chunk(index, chunk, init_lora, data, config=config, programs=programs)
        state = run_chunk(
            state, base, data, key, config=config, optimizer=optimizer, programs=programs
        )
        host = sharding.to_host(state.best)
        for i, s in enumerate(chunk):
            best[s] = jax.tree.map(lambda x, i=i: x[i], host)
        out += results(state, config)
    return best, out


def step_temp_bytes(
    programs: Programs,
    init_lora: Any,
    base: dict,
    data: Mapping[str, SpeakerData],
    *,
    config: AdaptConfig,
    optimizer: optim.OptimConfig,
) -> int | None:
    """Working memory of one compiled update of `programs.slots` slots (XLA's
    `memory_analysis().temp_size_in_bytes`; activations, gradients, Adam's update), or None
    when the backend does not report it. Compiles the step for the first speaker of `data`."""
    first = sorted(data)[:1]
    state = init_chunk(0, tuple(first), init_lora, data, config=config, programs=programs)
    batch = _slot_batches(state, data, config, optimizer.accumulate)
    t = state.tracker
    vec = [np.asarray(t[k], np.int32) for k in ("step", "per_epoch", "total")]
    vec += [t["active"].astype(bool), np.zeros(programs.slots, np.int32)]
    args = (state.bank, state.opt_state, base, batch, *vec, jax.random.key(0))
    try:
        return int(programs.step.lower(*args).compile().memory_analysis().temp_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def slots_for(config: AdaptConfig, n_speakers: int, mesh: jax.sharding.Mesh) -> int:
    """Slots per chunk: `chunk_speakers` (or every speaker) rounded up to the "data" axis."""
    d = mesh.shape[sharding.DATA]
    want = config.chunk_speakers or n_speakers
    return -(-want // d) * d
