"""How close the vmapped adaptation step runs to the machine: model FLOP/s against a matmul.

Whisper tiny.en cut to a short window (or, with `--model conformer`, a random Conformer AED of
ESPnet's LibriSpeech size), a bank of S speakers (LoRA r 8 on the attention projections, AdamW),
one jitted vmapped step (the program stage 3 runs). FLOPs per step come from XLA's
`compiled.cost_analysis()`; the machine's rate from a jitted 2048x2048 matmul timed in the same
process. After 3 untimed steps of each program (the first steps after compiling run up to 1.5x
slower), the programs and the matmul run round-robin (each repeat: one untimed call of each
program, then the faster of two timed calls, which drops this VM's sporadic stalls); step times
are medians, the rate the median over the repeats of the fastest of 3 matmuls. `fraction_of_peak` =
(flops_per_step / seconds_per_step) / matmul_flops_per_s; flops_per_step is counted on a dense
base with the native kernels off, the same for every program (XLA's cost analysis does not see
inside the kernels' FFI calls: the 4-bit products, the attention kernel's). With
`--quant nf4,none` the NF4 and float32 bases run side by side (nf4-dense: the NF4 base decoded
once, as stage3.dense_base does), and the NF4 / float32 step-time ratios are reported.

With `--dtype float32,bfloat16` each base also runs with bfloat16 activations (products with
bfloat16 operands accumulated in float32, which XLA's CPU backend gives to AMX where the CPU has
it), rated against a bfloat16 matmul of the same form, and the bfloat16 / float32 step-time ratios
are reported.

Run: python bench/bench_adapt_limit.py [--model tiny.en|conformer] [--slots 1,16] [--window 2]
       [--quant nf4,nf4-dense,none]
       [--dtype float32,bfloat16] [--tokens 16] [--batch 2] [--repeats 5] [--json FILE]
`--json` writes {"results": [per slot count, quant and dtype: slots, quant, dtype, flops_per_step,
seconds_per_step, matmul_flops_per_s, fraction_of_peak, ...], "rows": ..., "setting": ...}
(rows and setting in bench/report.py's format, for bench/run_all.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import limits
import numpy as np
import report

from pqm_jax import lora as lora_lib
from pqm_jax import sharding
from pqm_jax.quant import tree as qtree
from pqm_jax.run import backbone
from pqm_jax.run import config as config_lib
from pqm_jax.testing import toy
from pqm_jax.train import adapt, optim, steps

WARMUP = 3  # untimed steps of each program before the timed round-robin


# The Conformer AED of ESPnet's LibriSpeech recipes in size (12 + 6 layers, width 256, 4 heads,
# feed-forward 1,024, kernel 15), random weights, a character vocabulary.
CONFORMER = {"d_model": 256, "layers": 12, "heads": 4, "decoder_layers": 6, "kernel_size": 15}
CHARACTERS = "abcdefghijklmnopqrstuvwxyz '"


def _spec(model: str, quant: str, window: float) -> config_lib.ModelSpec:
    dims = CONFORMER if model == "conformer" else {}
    return config_lib.ModelSpec(name=model, audio_window_s=window, quant=quant, **dims)


def _base(model: str, quant: str, window: float):
    """nf4: decoded inside every step; nf4-dense: decoded once (stage3.dense_base); none: float32.
    tiny.en: the bundled weights; conformer: a random Conformer of `CONFORMER`'s size."""
    spec = _spec(model, quant.split("-")[0], window)
    if spec.family.trains_from_scratch(spec):
        params, cfg_full, _ = spec.family.scratch(spec, [CHARACTERS], key=jax.random.key(0))
    else:
        params, cfg_full, _ = spec.family.load(spec, seed=0, folder=None)
    base, cfg = spec.family.window(backbone.quantize(params, spec), cfg_full, window)
    if quant.endswith("-dense"):
        base = jax.jit(qtree.dequantize_tree)(base)
    return base, cfg


def describe_model(args) -> str:
    if args.model == "tiny.en":
        return f"Whisper tiny.en cut to a {args.window:g} s window"
    return (
        "a random Conformer AED ({layers} + {decoder_layers} layers, width {d_model}, {heads} "
        "heads, feed-forward 4 x width, kernel {kernel_size}, characters; joint CTC 0.3 / "
        "attention loss) on {window:g} s".format(window=args.window, **CONFORMER)
    )


def _batch(cfg, slots: int, batch: int, tokens: int, window: float) -> dict:
    """Random log-mel of `window` seconds (10 ms hops) and random tokens, [slots, 1, batch, ...]."""
    frames = round(window * 100)
    data = toy.random_batch(cfg, (slots, 1, batch), seed=slots, tokens=tokens, frames=frames)
    data["inputs"] %= cfg.vocab_size
    data["targets"] %= cfg.vocab_size
    return data


@dataclasses.dataclass(frozen=True)
class StepShape:
    """The step `_program` builds (this script's arguments of the same names will do too)."""

    model: str = "tiny.en"
    window: float = 2.0  # seconds of audio per example
    batch: int = 2  # examples per speaker
    tokens: int = 16  # decoder tokens per example


def _program(base, cfg, slots: int, args: StepShape, dtype: str = "float32"):
    """(compiled step, its arguments): one AdamW update of `slots` speakers' adapters, activations
    in `dtype`; `args` a StepShape or this script's parsed arguments."""
    family = _spec(args.model, "none", args.window).family
    lora = lora_lib.init(
        base,
        lora_lib.LoraConfig(rank=8, alpha=16.0, targets=family.lora_targets),
        key=jax.random.key(1),
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    base_s = sharding.base_shardings(base, mesh)
    base = sharding.put(base, base_s)
    programs = adapt.compile_programs(
        lora=lora,
        config=steps.StepConfig(model=cfg, dtype=dtype),
        optimizer=optim.OptimConfig(name="adamw", learning_rate=1e-3, weight_decay=0.01),
        mesh=mesh,
        base_shardings=base_s,
        slots=slots,
    )
    bank = jax.tree.map(lambda x: jnp.broadcast_to(x, (slots, *x.shape)), lora)
    data = _batch(cfg, slots, args.batch, args.tokens, args.window)
    vec = [np.zeros(slots, np.int32), np.full(slots, 10, np.int32)]
    vec += [np.full(slots, 100, np.int32), np.ones(slots, bool), np.arange(slots, dtype=np.int32)]
    args = (bank, programs.init_opt(bank), base, data, *vec, jax.random.key(0))
    return programs.step.lower(*args).compile(), args


def model_flops(base, cfg, slots: int, args: StepShape) -> float:
    """FLOPs of the step on a dense copy of `base` with XLA's products only, counted by XLA: the
    same model FLOPs for every base and program. (XLA's cost analysis does not see inside FFI
    calls: the native kernels' products, the 4-bit ones in the NF4 program and the attention
    kernel's in every program, would go uncounted; a quantised base would also count the
    dequantisation's multiplies.) Traced afresh under `limits.xla_only`."""
    dense = jax.jit(qtree.dequantize_tree)(base)
    with limits.xla_only():
        return limits.flops(_program(dense, cfg, slots, args)[0])


def _name(quant: str, dtype: str) -> str:
    return quant if dtype == "float32" else f"{quant} {dtype}"


def measure(args) -> tuple[list[dict], list[report.Row], list[str]]:
    results, compile_s = [], []
    models = {q: _base(args.model, q, args.window) for q in args.quant}
    cfg = next(iter(models.values()))[1]
    for slots in args.slots:
        programs = {}
        for quant, (base, _) in models.items():
            for dtype in args.dtype:
                t = time.perf_counter()
                name = _name(quant, dtype)
                programs[name] = _program(base, cfg, slots, args, dtype)
                compile_s.append(f"{slots} slots {name} {time.perf_counter() - t:.0f} s")
        for compiled, call in programs.values():  # warm-up: the first steps after compiling
            for _ in range(WARMUP):  # run up to 1.5x slower (fresh memory, the kernel's buffers)
                jax.block_until_ready(compiled(*call))
        # round-robin: every repeat times each program and the matmul once, so that a slow
        # minute of a shared machine falls on all of them alike
        times = {q: [] for q in programs}
        rates = {dtype: [] for dtype in args.dtype}
        for _ in range(args.repeats):
            for dtype in args.dtype:
                rates[dtype].append(limits.matmul_rate(repeats=3, dtype=dtype))
            for quant, (compiled, call) in programs.items():
                # one warm-up call, then the faster of two: this shared VM stalls a call now and
                # then by up to 0.9 s, in any of the programs (seen in runs of one program too)
                times[quant].append(min(limits.seconds(lambda c=compiled, a=call: c(*a), 2)))
        dense = models.get("none") or models.get("nf4-dense") or next(iter(models.values()))
        flops = model_flops(dense[0], cfg, slots, args)
        for quant, dtype in [(q, d) for q in models for d in args.dtype]:
            seconds = statistics.median(times[_name(quant, dtype)])
            rate = statistics.median(rates[dtype])
            results.append(
                {
                    "slots": slots,
                    "quant": quant,
                    "dtype": dtype,
                    "flops_per_step": flops,
                    "seconds_per_step": seconds,
                    "seconds_per_speaker_step": seconds / slots,
                    "matmul_flops_per_s": rate,
                    "fraction_of_peak": flops / seconds / rate,
                }
            )
            print(
                f"{slots:5d} slots {_name(quant, dtype):18s}: {seconds:.4f} s/step, "
                f"{flops / 1e9:.1f} GFLOP, {flops / seconds / 1e9:.1f} GFLOP/s = "
                f"{flops / seconds / rate:.1%} of {limits.describe_rate(rate, dtype)}",
                flush=True,
            )
    prefix = "" if args.model == "tiny.en" else f"{args.model} "
    rows = [
        report.Row(
            figure=f"{prefix}adaptation step, {r['slots']} speakers, {r['quant']} base, {r['dtype']} "
            "activations: model FLOP/s",
            ours=r["flops_per_step"] / r["seconds_per_step"],
            peer=r["matmul_flops_per_s"],
            peer_name=f"2048x2048 {r['dtype']} matmul, same run",
            unit="FLOP/s",
            better="higher",
            runs=args.repeats,
            note=f"{r['flops_per_step'] / 1e9:.2f} GFLOP per step, {r['seconds_per_step']:.4g} s",
            limit=r["fraction_of_peak"],
            limit_name=limits.describe_rate(r["matmul_flops_per_s"], r["dtype"]),
        )
        for r in results
    ]
    names = {"nf4": "NF4 base decoded in the step", "nf4-dense": "NF4 base decoded once"}
    for slots in args.slots:
        by = {(r["quant"], r["dtype"]): r for r in results if r["slots"] == slots}
        for (quant, dtype), r in by.items():
            if quant in names and ("none", dtype) in by:
                peer, peer_name = by["none", dtype], f"same step, {dtype} activations, float32 base"
                figure = f"{prefix}adaptation step time, {slots} speakers, {names[quant]}, {dtype} activations"
            elif dtype != "float32" and (quant, "float32") in by:
                peer, peer_name = by[quant, "float32"], "same step, float32 activations"
                figure = f"{prefix}adaptation step time, {slots} speakers, {quant} base, {dtype} activations"
            else:
                continue
            rows.append(
                report.Row(
                    figure=figure,
                    ours=r["seconds_per_step"],
                    peer=peer["seconds_per_step"],
                    peer_name=peer_name,
                    unit="s",
                    better="lower",
                    runs=args.repeats,
                )
            )
    setting = [
        f"{describe_model(args)}, {args.tokens} decoder tokens, batch "
        f"{args.batch} per speaker, LoRA r 8 on q/k/v/out, AdamW; random log-mel and tokens; one "
        f"vmapped jitted step on {jax.devices()[0].platform}; FLOPs from XLA's cost analysis of "
        "the step on a dense base (the same model FLOPs for every base)",
        "compile (excluded): " + ", ".join(compile_s),
    ]
    return results, rows, setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", default="1,16", help="comma-separated bank sizes")
    ap.add_argument(
        "--quant", default="nf4,nf4-dense,none", help="comma-separated: nf4, nf4-dense, none"
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        help="comma-separated activation dtypes: float32, bfloat16 (products accumulate in "
        "float32; the limit is the matmul of that dtype)",
    )
    ap.add_argument(
        "--model",
        default="tiny.en",
        choices=("tiny.en", "conformer"),
        help="tiny.en (bundled weights) or conformer (random weights, the size of CONFORMER)",
    )
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write results, rows and setting here")
    args = ap.parse_args()
    args.slots = [int(x) for x in args.slots.split(",")]
    args.quant = [q for q in args.quant.split(",") if q]
    args.dtype = [d for d in args.dtype.split(",") if d]
    results, rows, setting = measure(args)
    report.emit(rows, setting, "python bench/bench_adapt_limit.py", None)
    if args.json:
        data = {"results": results, "rows": [r.__dict__ for r in rows], "setting": setting}
        pathlib.Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
