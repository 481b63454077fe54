"""Per-speaker adaptation throughput: the vmapped bank program against a Python loop.

Both paths do the same work: S speakers x K updates of B utterances each, NF4 Whisper tiny.en
(or a random model), LoRA r 8 on every attention projection, AdamW. "vmapped" runs one jitted
step that updates all S speakers' adapters at once (frozen base shared); "loop" calls a jitted
single-speaker step S times per round. Compilation is excluded and reported apart. Reported:
speakers adapted per minute for a K-step adaptation (default 18 steps, the reference's synthetic
setup), their ratio (above 1: the bank is faster), and memory per speaker (adapters + optimiser
state, and the compiled program's temporaries divided by S).

Run: python bench/bench_adapt.py [--model tiny.en|random] [--speakers 1,4,8] [--batch 1,2,4]
       [--window 8] [--tokens 32] [--rounds 3] [--steps-per-speaker 18]
Timings are medians over rounds, interleaving the two paths; the device is printed.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import lora as lora_lib
from pqm_jax import sharding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.run import backbone
from pqm_jax.run import config as config_lib
from pqm_jax.testing import toy
from pqm_jax.train import adapt, optim, steps


def _model(name: str, window: float):
    spec = config_lib.ModelSpec(name=name, audio_window_s=window, d_model=256, layers=4, heads=4)
    params, cfg, _ = spec.family.load(spec, seed=0, folder=None)
    base = backbone.quantize(params, spec)
    return spec.family.window(base, cfg, window)


def _bank_batch(cfg, s: int, b: int, tokens: int, seed: int) -> dict:
    batch = toy.random_batch(cfg, (s, 1, b), seed=seed, tokens=tokens)
    batch["inputs"] %= cfg.vocab_size
    batch["targets"] %= cfg.vocab_size
    return batch


def _time(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def _loop(single, rows, *args) -> list:
    """The baseline: one jitted single-speaker step per speaker."""
    lora, opt, base, scalars = args
    return [single(lora, opt, base, r, *scalars) for r in rows]


def run(args) -> None:
    base, cfg = _model(args.model, args.window)
    lora = lora_lib.init(
        base,
        lora_lib.LoraConfig(rank=8, alpha=16.0, targets=whisper_family.LORA_TARGETS),
        key=jax.random.key(1),
    )
    opt_cfg = optim.OptimConfig(name="adamw", learning_rate=1e-3, weight_decay=0.01)
    step_cfg = steps.StepConfig(model=cfg)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    base_s = sharding.base_shardings(base, mesh)
    base = sharding.put(base, base_s)
    key = jax.random.key(0)
    lora_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(lora))
    print(
        f"# device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})"
    )
    print(
        f"# model {args.model}, window {args.window} s ({cfg.max_source_positions} encoder "
        f"positions), {args.tokens} decoder tokens, LoRA r 8 ({lora_lib.num_params(lora)} params)"
    )
    print(
        "speakers batch | compile s (bank/loop) | s per round bank / loop | "
        f"speakers per min ({args.steps_per_speaker}-step adaptation) bank / loop | ratio | "
        "MiB per speaker (state / temporaries)"
    )
    single = jax.jit(functools.partial(adapt.speaker_update, config=step_cfg, optimizer=opt_cfg))
    for b in args.batch:
        one = jax.tree.map(lambda x: x[0], _bank_batch(cfg, 1, b, args.tokens, seed=b))
        opt1 = optim.init(opt_cfg, lora)
        scalars = (jnp.int32(0), jnp.int32(10), jnp.int32(100), True, jnp.int32(7), key)
        t_single = _time(single, lora, opt1, base, one, *scalars)
        for s in args.speakers:
            programs = adapt.compile_programs(
                lora=lora,
                config=step_cfg,
                optimizer=opt_cfg,
                mesh=mesh,
                base_shardings=base_s,
                slots=s,
            )
            bank = jax.tree.map(lambda x, s=s: jnp.broadcast_to(x, (s, *x.shape)), lora)
            opt = programs.init_opt(bank)
            batch = _bank_batch(cfg, s, b, args.tokens, seed=s * 100 + b)
            vec = [np.zeros(s, np.int32), np.full(s, 10, np.int32), np.full(s, 100, np.int32)]
            vec += [np.ones(s, bool), np.arange(s, dtype=np.int32)]
            lowered = programs.step.lower(bank, opt, base, batch, *vec, key)
            t0 = time.perf_counter()
            compiled = lowered.compile()
            t_compile = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", 0) if mem is not None else 0
            rows = [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(s)]
            bank_t, loop_t = [], []
            jax.block_until_ready(compiled(bank, opt, base, batch, *vec, key))  # warm
            for _ in range(args.rounds):
                bank_t.append(_time(compiled, bank, opt, base, batch, *vec, key))
                loop_t.append(_time(_loop, single, rows, lora, opt1, base, scalars))
            tb, tl = statistics.median(bank_t), statistics.median(loop_t)
            per_min = [60.0 * s / (t * args.steps_per_speaker) for t in (tb, tl)]
            state = 4 * lora_bytes  # adapters, Adam mu and nu, best copy
            print(
                f"{s:8d} {b:5d} | {t_compile:6.1f} / {t_single:5.1f} | {tb:7.2f} / {tl:7.2f} | "
                f"{per_min[0]:8.2f} / {per_min[1]:8.2f} | {tl / tb:5.2f}x | "
                f"{state / 2**20:5.1f} / {temp / s / 2**20:7.1f}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny.en", choices=("tiny.en", "random"))
    ap.add_argument("--speakers", default="1,4,8")
    ap.add_argument("--batch", default="1,2,4")
    ap.add_argument("--window", type=float, default=8.0)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps-per-speaker", type=int, default=18)
    args = ap.parse_args()
    args.speakers = [int(x) for x in args.speakers.split(",")]
    args.batch = [int(x) for x in args.batch.split(",")]
    run(args)


if __name__ == "__main__":
    main()
