"""The adaptation step with LoRA's low-rank products written plainly against `lora.branch`.

The same vmapped step as bench/bench_adapt_limit.py (Whisper tiny.en, 2 s window, 16 tokens,
batch 2 per speaker, LoRA r 8 on q/k/v/out, AdamW), compiled twice in one process: once with
`lora.branch` (rows flattened, scale on b, a hand-written backward) and once with the plain
`scale * (x @ a) @ b` over [batch, time, in] rows left to autodiff, which is what the library
did before. Both programs and a 2048x2048 matmul run round-robin; step times are medians. It
shows how much XLA's CPU backend loses to the plain formula: the gradient products contract two
axes, and it recomputes the residual-gradient chain in a transposed layout for each adapter.

Run: python bench/bench_lora_products.py [--slots 16] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import bench_adapt_limit
import jax
import jax.numpy as jnp
import limits
import report

from pqm_jax import lora as lora_lib


def plain_branch(x, lora, *, rng=None):
    """scale * (x @ a) @ b on [..., in] rows, gradients by autodiff (no dropout: not used here)."""
    del rng
    a, b = lora.a.astype(x.dtype), lora.b.astype(x.dtype)
    return (x @ a) @ b * jnp.asarray(lora.scale, x.dtype)


@contextlib.contextmanager
def _branch(fn):
    """lora.branch replaced by `fn` while a program is traced (jax's caches cleared around)."""
    saved = lora_lib.branch
    lora_lib.branch = fn
    jax.clear_caches()
    try:
        yield
    finally:
        lora_lib.branch = saved
        jax.clear_caches()


def measure(args) -> tuple[list[report.Row], list[str]]:
    base, cfg = bench_adapt_limit._base("tiny.en", "none", 2.0)
    programs = {}
    for name, fn in (("plain", plain_branch), ("library", lora_lib.branch)):
        with _branch(fn):
            programs[name] = bench_adapt_limit._program(
                base, cfg, args.slots, bench_adapt_limit.StepShape()
            )
    for compiled, call in programs.values():
        jax.block_until_ready(compiled(*call))
    times, rates = {k: [] for k in programs}, []
    for _ in range(args.repeats):
        rates.append(limits.matmul_rate(repeats=3))
        for name, (compiled, call) in programs.items():
            times[name] += limits.seconds(lambda c=compiled, a=call: c(*a), 1)
    rate = statistics.median(rates)
    step = {k: statistics.median(v) for k, v in times.items()}
    counted = bench_adapt_limit.model_flops(base, cfg, args.slots, bench_adapt_limit.StepShape())
    flops = dict.fromkeys(programs, counted)  # the same model FLOPs, written two ways
    for k in programs:
        print(f"{k:8s}: {step[k]:.4f} s/step, {flops[k] / step[k] / rate:.1%} of matmul rate")
    rows = [
        report.Row(
            figure=f"adaptation step, {args.slots} speakers, float32 base: step time",
            ours=step["library"],
            peer=step["plain"],
            peer_name="same step, LoRA products (x @ a) @ b left to autodiff",
            unit="s",
            better="lower",
            runs=args.repeats,
            limit=flops["library"] / step["library"] / rate,
            limit_name=limits.describe_rate(rate),
        )
    ]
    setting = [
        f"Whisper tiny.en cut to a 2 s window, 16 decoder tokens, batch 2 per speaker, LoRA r 8 "
        f"on q/k/v/out, AdamW, {args.slots} speakers in one vmapped jitted step on "
        f"{jax.devices()[0].platform}; the two programs and the matmul round-robin",
        f"plain: {flops['plain'] / 1e9:.1f} GFLOP per step, {step['plain']:.4g} s = "
        f"{flops['plain'] / step['plain'] / rate:.1%} of the matmul rate",
    ]
    return rows, setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="write rows and setting here (bench/run_all.py)")
    args = ap.parse_args()
    rows, setting = measure(args)
    report.emit(rows, setting, "python bench/bench_lora_products.py", args.json)


if __name__ == "__main__":
    main()
