"""Stage 3: the vmapped, sharded, chunked bank equals adapting each speaker alone in a loop."""

import functools
from unittest import mock

import jax
import numpy as np
import pytest

from pqm_jax import jit_cache, sharding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.quant import tree as qtree
from pqm_jax.quant.native import matvec
from pqm_jax.testing import toy
from pqm_jax.train import adapt, optim, steps
from pqm_jax.train import examples as ex

CONFIG = toy.tiny_config(d_model=32, vocab_size=64, positions=8)
STEP = steps.StepConfig(model=CONFIG)
OPT = optim.OptimConfig(
    name="adamw", learning_rate=3e-2, schedule="exponential", decay_rate=0.5, clip_norm=1.0
)
ADAPT = adapt.AdaptConfig(epochs=3, batch_size=4, eval_batch_size=3, patience=1, chunk_speakers=3)


def _examples(n, seed):
    b = toy.random_batch(CONFIG, (n,), seed=seed, tokens=8)
    return ex.Examples(
        ids=tuple(f"u{i}" for i in range(n)),
        inputs=b["inputs"],
        targets=b["targets"],
        weights=b["weights"],
        mel=b["mel"],
    )


@pytest.fixture(scope="module")
def setup():
    base = toy.quantized_model(CONFIG, key=jax.random.key(0))
    lora = toy.adapters(base, key=jax.random.key(1), dropout=0.1)
    # Different sizes: different epoch lengths, run lengths and schedules per speaker.
    sizes = {"ann": 5, "bob": 9, "cy": 4, "dee": 12, "eve": 6}
    data = {}
    for i, (s, n) in enumerate(sizes.items()):
        train = _examples(n, i)
        k = 2 + i % 3  # dev = some training utterances: accuracy can rise, then fall
        dev = ex.Examples(
            train.ids[:k], train.inputs[:k], train.targets[:k], train.weights[:k], train.mel[:k]
        )
        data[s] = adapt.SpeakerData(train=train, dev=dev)
    return base, lora, data


_UPDATE = jax.jit(functools.partial(adapt.speaker_update, config=STEP, optimizer=OPT))
_STATS = jax.jit(functools.partial(steps.token_stats, config=STEP))


def _alone(base, lora, data, speaker, key):
    """The plain loop: one speaker, unbatched jitted steps, the documented schedule."""
    upd, stats, d = _UPDATE, _STATS, data[speaker]

    def dev_acc(lo):
        c = t = 0.0
        for idx in ex.eval_batches(d.dev, ADAPT.eval_batch_size):
            s = stats(lo, base, ex.take_padded(d.dev, idx))
            c, t = c + float(s["correct"]), t + float(s["tokens"])
        return c / max(t, 1.0)

    per_epoch = ex.steps_per_epoch(len(d.train), ADAPT.batch_size)
    total = ADAPT.epochs * per_epoch
    opt_state = optim.init(OPT, lora)
    best, best_acc, best_step, bad, step = lora, dev_acc(lora), 0, 0, 0
    while True:
        batch = ex.batch_at(d.train, seed=ADAPT.seed, name=speaker, step=step, batch=4)
        lora, opt_state, _ = upd(
            lora,
            opt_state,
            base,
            ex.micro(batch, 1),
            np.int32(step),
            np.int32(per_epoch),
            np.int32(total),
            True,
            np.int32(adapt.speaker_seed(speaker)),
            key,
        )
        step += 1
        if step % per_epoch == 0 or step >= total:
            acc = dev_acc(lora)
            if acc > best_acc:
                best, best_acc, best_step, bad = lora, acc, step, 0
            else:
                bad += 1
            if step >= total or bad >= ADAPT.patience:
                return best, best_acc, best_step, step


def test_vmapped_bank_equals_loop(setup):
    base, lora, data = setup
    key = jax.random.key(5)
    mesh_config = sharding.MeshConfig(data=4, model=2, base_rules=whisper_family.SHARD_RULES)
    mesh = sharding.make_mesh(mesh_config)
    slots = adapt.slots_for(ADAPT, len(data), mesh)
    assert slots == 4  # chunk of 3 rounded up to the data axis: one padded slot per chunk
    programs = adapt.compile_programs(
        lora=lora,
        config=STEP,
        optimizer=OPT,
        mesh=mesh,
        base_shardings=sharding.base_shardings(base, mesh, mesh_config),
        slots=slots,
    )
    best, results = adapt.adapt(
        lora, base, data, key, config=ADAPT, optimizer=OPT, programs=programs
    )
    assert len(adapt.chunk_plan(data, ADAPT, OPT, slots)) == 2
    by_name = {r.speaker: r for r in results}
    assert sorted(by_name) == sorted(data)
    stopped = 0
    for s in data:
        ref_best, ref_acc, ref_step, ref_steps = _alone(base, lora, data, s, key)
        r = by_name[s]
        assert (r.best_step, r.steps) == (ref_step, ref_steps), s
        assert abs(r.best_dev_accuracy - ref_acc) < 1e-6
        assert toy.tree_max_diff(best[s], ref_best) < 2e-5, s
        stopped += r.stopped_early
        if r.best_step > 0:
            assert toy.tree_max_diff(best[s], lora) > 1e-3  # it did move
    assert any(r.best_step > 0 for r in results)
    print({s: (r.best_step, r.steps, r.stopped_early) for s, r in by_name.items()}, stopped)


def test_single_programs_match_vmapped(setup):
    base, lora, data = setup
    key = jax.random.key(5)
    small = {s: data[s] for s in ("ann", "cy")}
    single = adapt.compile_single(config=STEP, optimizer=OPT)
    best, results = adapt.adapt(
        lora, base, small, key, config=ADAPT, optimizer=OPT, programs=single
    )
    for s in small:
        ref_best, _, ref_step, _ = _alone(base, lora, data, s, key)
        assert {r.speaker: r.best_step for r in results}[s] == ref_step
        assert toy.tree_max_diff(best[s], ref_best) < 1e-6


def _programs(lora, base, mesh, *, slots):
    return adapt.compile_programs(
        lora=lora,
        config=STEP,
        optimizer=OPT,
        mesh=mesh,
        base_shardings=sharding.base_shardings(base, mesh),
        slots=slots,
    )


def test_a_dense_copy_of_the_base_gives_the_same_adapters(setup):
    """stage3.dense_base: decoding the NF4 base once, outside the step, changes no adapter."""
    base, lora, data = setup
    key = jax.random.key(5)
    small = {s: data[s] for s in ("ann", "bob", "dee")}
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2))
    dense = jax.jit(qtree.dequantize_tree)(base)
    out = []
    for b in (base, dense):
        programs = _programs(lora, b, mesh, slots=4)
        out.append(adapt.adapt(lora, b, small, key, config=ADAPT, optimizer=OPT, programs=programs))
    (best_q, res_q), (best_d, res_d) = out
    assert [(r.best_step, r.steps) for r in res_q] == [(r.best_step, r.steps) for r in res_d]
    assert toy.tree_max_diff(best_q, best_d) == 0.0


def _step_program_text(programs, base, lora, slots):
    bank = jax.tree.map(lambda x: np.broadcast_to(x, (slots, *x.shape)), lora)
    data = toy.random_batch(CONFIG, (slots, 1, 2), seed=0, tokens=8)
    vec = [np.zeros(slots, np.int32), np.full(slots, 4, np.int32), np.full(slots, 8, np.int32)]
    vec += [np.ones(slots, bool), np.arange(slots, dtype=np.int32)]
    args = (bank, programs.init_opt(bank), base, data, *vec, jax.random.key(0))
    return programs.step.lower(*args).as_text()


def test_one_slot_multiplies_the_4bit_base_by_the_native_kernel(setup, monkeypatch):
    """A bank of one slot on one device reads the NF4 codes with the native kernel (forward and
    gradient products: no dense copy of those weights) and trains the adapters that the XLA
    path trains; a bank of two keeps XLA's merged products."""
    if not matvec.available():
        pytest.skip("native kernel unavailable (no C++ compiler?)")
    monkeypatch.setenv("PQM_NATIVE", "1")  # the suite's eight fake devices switch it off
    base, lora, data = setup
    small = {s: data[s] for s in ("ann", "cy")}
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])

    def run(slots):
        jit_cache.clear()  # programs are cached per process without the kernel's switch
        programs = _programs(lora, base, mesh, slots=slots)
        text = _step_program_text(programs, base, lora, slots)
        out = adapt.adapt(
            lora, base, small, jax.random.key(5), config=ADAPT, optimizer=OPT, programs=programs
        )
        return text, out

    try:
        text, (best_k, res_k) = run(1)
        assert matvec.TARGET in text
        assert matvec.TARGET not in run(2)[0]
        with mock.patch.object(matvec, "available", lambda: False):
            text, (best_x, res_x) = run(1)
        assert matvec.TARGET not in text
    finally:
        jit_cache.clear()
    assert [(r.best_step, r.steps) for r in res_k] == [(r.best_step, r.steps) for r in res_x]
    assert any(r.best_step > 0 for r in res_k)
    assert 0 < toy.tree_max_diff(best_k, best_x) < 1e-4
