"""Per-speaker adaptation throughput: our vmapped bank against the paper's PyTorch route.

Both adapt S speakers for K AdamW steps each (lr 1e-3, weight decay 0.01, constant schedule) of
B utterances, from the same Whisper weights, with LoRA r 8, alpha 16 on q/k/v/out of every
attention, the same random log-mel windows and token ids (equal shapes), the same weighted
teacher-forced cross-entropy:

- ours: NF4 base (block 64, double quant, the Whisper family's `QUANT_TARGETS`), one jitted `vmap`ped step
  (`train.adapt.compile_programs`) updating all S speakers' adapters at once, K times;
- peer: transformers `WhisperForConditionalGeneration` + bitsandbytes `Linear4bit` NF4 (block 64,
  double quant) on every linear + PEFT LoRA, one speaker after another (`peft_route.py`).

Timed: from fresh adapters and optimiser state to the K-th update of the last speaker; our
compilation and the peer's model building are excluded (reported in the setting). The two routes
run interleaved, `--repeats` times, for each bank size in `--speakers` (the peer's cost per
speaker does not depend on S; ours falls as S grows). Reported: speakers per minute, and seconds
per update of one speaker.

Run: python bench/bench_peft_peer.py [--speakers 4,16] [--steps 3] [--batch 2] [--window 2]
       [--tokens 16] [--repeats 3] [--threads 0] [--json rows.json]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import limits
import numpy as np
import peft_route
import report

from pqm_jax import lora as lora_lib
from pqm_jax import resources, sharding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.run import backbone
from pqm_jax.run import config as config_lib
from pqm_jax.testing import toy
from pqm_jax.text import whisper_tokenizer as text_lib
from pqm_jax.train import adapt, optim, steps

LR, WEIGHT_DECAY = 1e-3, 0.01


def batches(cfg, s: int, k: int, b: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random batches [S, K, B, ...] (mel, inputs, targets, weights), token ids < vocab."""
    batch = toy.random_batch(cfg, (s, k, b), seed=seed, tokens=tokens)
    batch["inputs"] %= cfg.vocab_size
    batch["targets"] %= cfg.vocab_size
    return batch


def _ours(base, cfg, s: int, k: int, mesh, base_s):
    """(a function running one adaptation of S speakers on the bank, LoRA parameter count)."""
    lora = lora_lib.init(
        base,
        lora_lib.LoraConfig(rank=8, alpha=16.0, targets=whisper_family.LORA_TARGETS),
        key=jax.random.key(1),
    )
    opt_cfg = optim.OptimConfig(name="adamw", learning_rate=LR, weight_decay=WEIGHT_DECAY)
    programs = adapt.compile_programs(
        lora=lora,
        config=steps.StepConfig(model=cfg),
        optimizer=opt_cfg,
        mesh=mesh,
        base_shardings=base_s,
        slots=s,
    )
    key = jax.random.key(0)
    total = np.full(s, k, np.int32)
    vec_at = [
        [np.full(s, i, np.int32), total, total, np.ones(s, bool), np.arange(s, dtype=np.int32)]
        for i in range(k)
    ]

    def run(data: dict) -> float:
        bank = jax.tree.map(lambda x: jnp.broadcast_to(x, (s, *x.shape)), lora)
        opt = programs.init_opt(bank)
        metrics = None
        for i in range(k):
            step_batch = {n: v[:, i : i + 1] for n, v in data.items()}  # [S, A=1, B, ...]
            bank, opt, metrics = programs.step(bank, opt, base, step_batch, *vec_at[i], key)
        return float(jax.block_until_ready(metrics["loss"])[0])

    def flops(data: dict) -> float:
        """FLOPs of one adaptation of the S speakers (k steps), from the lowered step."""
        bank = jax.tree.map(lambda x: jax.ShapeDtypeStruct((s, *x.shape), x.dtype), lora)
        opt = jax.eval_shape(programs.init_opt, bank)
        step_batch = {n: v[:, :1] for n, v in data.items()}
        with limits.xla_only():  # the native kernels' products counted too
            lowered = programs.step.lower(bank, opt, base, step_batch, *vec_at[0], key)
        return k * limits.flops(lowered)

    run.flops = flops
    return run, lora_lib.num_params(lora)


def measure(args) -> tuple[list[report.Row], list[str]]:
    import torch

    spec = config_lib.ModelSpec(name="tiny.en", audio_window_s=args.window)
    full, cfg_full, _ = spec.family.load(spec, seed=0, folder=None)
    full_w, cfg = spec.family.window(full, cfg_full, args.window)
    base, _ = spec.family.window(backbone.quantize(full, spec), cfg_full, args.window)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    base_s = sharding.base_shardings(base, mesh)
    base = sharding.put(base, base_s)
    special = text_lib.load(resources.tiny_en_dir()).special
    t = time.perf_counter()
    model, n_linear = peft_route.build(
        jax.tree.map(np.asarray, full_w), cfg, sot=special.sot, eot=special.eot
    )
    t_build = time.perf_counter() - t

    def peer(d: dict) -> float:
        loss = 0.0
        for i in range(len(d["mel"])):
            one = {n: v[i] for n, v in d.items()}
            loss = peft_route.adapt_speaker(model, one, lr=LR, weight_decay=WEIGHT_DECAY)
        return loss

    probe = {}
    one_step = {n: v[:1, :1] for n, v in batches(cfg, 1, 1, args.batch, args.tokens).items()}
    for threads in [args.threads] if args.threads else sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)  # oversubscribed CPUs can make more threads far slower
        peer(one_step)  # warm up (one step of one speaker)
        t = time.perf_counter()
        peer(one_step)
        probe[threads] = time.perf_counter() - t
    torch.set_num_threads(min(probe, key=probe.get))

    rows, compiled, k = [], [], args.steps
    rate = limits.matmul_rate(repeats=5)
    peer_name = "PyTorch + bitsandbytes NF4 + PEFT, speaker after speaker"
    for s in args.speakers:
        data = batches(cfg, s, k, args.batch, args.tokens, seed=s)
        ours, n_lora = _ours(base, cfg, s, k, mesh, base_s)
        t = time.perf_counter()
        ours(data)  # compile + warm up
        compiled.append(f"{s} slots {time.perf_counter() - t:.0f} s")
        n_peer = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n_peer != n_lora:
            raise SystemExit(f"LoRA sizes differ: ours {n_lora}, PEFT {n_peer}")
        t_ours, t_peer = [], []
        for _ in range(args.repeats):  # interleaved
            t = time.perf_counter()
            ours(data)
            t_ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            peer(data)
            t_peer.append(time.perf_counter() - t)
        fraction = ours.flops(data) / report.median(t_ours) / rate
        rows.append(
            report.row(
                f"adaptation throughput, {s} speakers x {k} steps",
                [60.0 * s / x for x in t_ours],
                [60.0 * s / x for x in t_peer],
                peer_name=peer_name,
                unit="speakers/min",
                better="higher",
                limit=fraction,
                limit_name=limits.describe_rate(rate),
                note=f"{k}-step adaptations",
            )
        )
        rows.append(
            report.row(
                f"seconds per update of one speaker, {s} speakers",
                [x / (s * k) for x in t_ours],
                [x / (s * k) for x in t_peer],
                peer_name=peer_name,
                unit="s",
                better="lower",
            )
        )
    setting = [
        f"Whisper tiny.en cut to a {args.window:g} s window ({cfg.max_source_positions} encoder "
        f"positions), {args.tokens} decoder tokens, batch {args.batch}, {k} steps per speaker, "
        "random log-mel and token ids (equal shapes for both); LoRA r 8, alpha 16 on q/k/v/out "
        f"({n_lora:,} trainable parameters in both); AdamW lr {LR}, weight decay {WEIGHT_DECAY}",
        f"ours: NF4 base, one vmapped jitted step over a bank of all S speakers on "
        f"{jax.devices()[0].platform} (JAX's default threads); compile + warm-up excluded: "
        + ", ".join(compiled),
        f"peer: {n_linear} bitsandbytes Linear4bit NF4 layers (block 64, double quant; tied "
        f"token embedding rounded through NF4, convolutions float32), PEFT LoRA, "
        f"torch {torch.__version__} on CPU with {torch.get_num_threads()} threads (the faster in a "
        f"probe of one step: {', '.join(f'{n}: {v:.2f} s' for n, v in probe.items())}); model "
        f"building {t_build:.1f} s, excluded",
    ]
    return rows, setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", default="4,16", help="comma-separated bank sizes")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the peer; 0: the faster of 1 and all cores, by a probe",
    )
    ap.add_argument("--json", help="also write the rows here (for bench/run_all.py)")
    args = ap.parse_args()
    args.speakers = [int(x) for x in args.speakers.split(",")]
    rows, setting = measure(args)
    report.emit(rows, setting, "python bench/bench_peft_peer.py", args.json)


if __name__ == "__main__":
    main()
