"""The adaptation step with and without the native gradient barrier and the short-attention kernel.

The same vmapped step as bench/bench_adapt_limit.py (Whisper tiny.en, 2 s window, 16 tokens,
batch 2 per speaker, LoRA r 8 on q/k/v/out, AdamW), traced four times in one process with the
switches read at tracing: `PQM_NATIVE_BARRIER` (each block's residual-stream gradient written
once, `quant.native.barrier`) and `PQM_NATIVE_ATTENTION` (the 100-frame encoder attention and
the 16 x 100 cross-attention in the native kernel, forward and backward), each on and off. The
four programs and a 2048x2048 matmul run round-robin (the faster of two calls per round); step
times are medians. The barrier must leave every output bit-equal (checked); the attention kernel
sums in its own order (the largest output difference is printed).

With `--model conformer` (bench_adapt_limit's random Conformer AED, 32 characters), the barrier
on and off only (its relative-position attention has no native kernel); there the barrier sums
the residual gradients in another order, so outputs agree to rounding, not bit for bit.

Run: python bench/bench_step_switches.py [--model tiny.en|conformer] [--slots 16]
       [--dtype float32] [--repeats 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics

import bench_adapt_limit
import jax
import jax.numpy as jnp
import limits
import numpy as np
import report

SWITCHES = ("PQM_NATIVE_BARRIER", "PQM_NATIVE_ATTENTION")
PROGRAMS = {
    "neither": ("0", "0"),
    "barrier": ("1", "0"),
    "attention": ("0", "1"),
    "both": ("1", "1"),
}


def _trace(base, cfg, args, values):
    """The step compiled with the switches set to `values` (the caller's come back afterwards)."""
    with limits.switches(**dict(zip(SWITCHES, values, strict=True))):
        return bench_adapt_limit._program(base, cfg, args.slots, args, args.dtype)


def _floats(tree) -> list[np.ndarray]:
    leaves = jax.tree.leaves(tree)
    return [np.asarray(x, np.float32) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]


def _moved(a, b) -> float:
    """The largest difference of two trees' float arrays, relative to each array's magnitude."""
    pairs = zip(_floats(a), _floats(b), strict=True)
    return max(
        float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), 1e-30)) for x, y in pairs
    )


def measure(args) -> tuple[list[report.Row], list[str]]:
    base, cfg = bench_adapt_limit._base(args.model, "none", args.window)
    # the Conformer's relative-position attention has no native kernel: barrier on and off only
    kinds = PROGRAMS if args.model == "tiny.en" else ("neither", "barrier")
    programs = {name: _trace(base, cfg, args, PROGRAMS[name]) for name in kinds}
    calls = {"barrier": "pqm_materialize", "attention": "pqm_attention"}
    for name, (compiled, _) in programs.items():
        text = compiled.as_text()
        for switch, target in calls.items():
            if (target in text) != (name in (switch, "both")):
                raise RuntimeError(f"program {name!r}: {target} present: {target in text}")
    # (bank, optimiser state, metrics): all compared for the barrier; for the attention kernel
    # the optimiser state and metrics (the first AdamW update of a zero-initialised b turns a
    # gradient that is zero up to rounding into +-lr, whichever way the rounding went)
    outs = {name: c(*a) for name, (c, a) in programs.items()}
    for compiled, call in programs.values():
        for _ in range(bench_adapt_limit.WARMUP):
            jax.block_until_ready(compiled(*call))
    times, rates = {k: [] for k in programs}, []
    for i in range(args.repeats):
        rates.append(limits.matmul_rate(repeats=3, dtype=args.dtype))
        for name in list(programs)[:: -1 if i % 2 else 1]:
            compiled, call = programs[name]
            times[name].append(min(limits.seconds(lambda c=compiled, a=call: c(*a), 2)))
    rate = statistics.median(rates)
    step = {k: statistics.median(v) for k, v in times.items()}
    flops = limits.flops(programs["neither"][0])
    for k in programs:
        print(f"{k:9s}: {step[k]:.4f} s/step, {flops / step[k] / rate:.1%} of the matmul rate")
    if args.model == "tiny.en":  # Whisper: the same sums in the same order
        barrier_moved = _moved(outs["barrier"], outs["neither"])
        if barrier_moved:
            raise RuntimeError("the barrier changed the step's outputs")
    else:  # the Conformer: the residual sums associate differently (compared as the kernel's)
        barrier_moved = _moved(outs["barrier"][1:], outs["neither"][1:])
        if barrier_moved > 1e-4:
            raise RuntimeError(f"the barrier moved the step's outputs by {barrier_moved:.2g}")
    names = {"barrier": "gradient barrier", "attention": "short-attention kernel", "both": "both"}
    names = {k: v for k, v in names.items() if k in programs}
    prefix = "" if args.model == "tiny.en" else f"{args.model} "
    rows = [
        report.Row(
            figure=f"{prefix}adaptation step, {args.slots} speakers, {args.dtype}: step time "
            f"with {label}",
            ours=step[name],
            peer=step["neither"],
            peer_name="same step, neither (XLA's fusion and attention)",
            unit="s",
            better="lower",
            runs=args.repeats,
            limit=flops / step[name] / rate,
            limit_name=limits.describe_rate(rate, args.dtype),
        )
        for name, label in names.items()
    ]
    model = bench_adapt_limit.describe_model(args)
    barrier = (
        "every output bit-equal to neither's"
        if not barrier_moved
        else f"optimiser state and metrics within {barrier_moved:.2g} of each array's largest "
        "magnitude"
    )
    setting = [
        f"{model}, {args.tokens} decoder tokens, batch {args.batch} per speaker, LoRA r 8 on the "
        f"attention projections, AdamW, {args.slots} speakers in one vmapped jitted step on "
        f"{jax.devices()[0].platform}, {args.dtype}; {len(programs)} programs and the matmul "
        "round-robin",
        f"neither: {flops / 1e9:.1f} GFLOP per step, {step['neither']:.4g} s = "
        f"{flops / step['neither'] / rate:.1%} of the matmul rate",
        f"barrier: {barrier}",
    ]
    if "attention" in outs:
        moved = _moved(outs["attention"][1:], outs["neither"][1:])
        setting.append(
            f"attention kernel: optimiser state and metrics within {moved:.2g} of each array's "
            "largest magnitude"
        )
    return rows, setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en", choices=("tiny.en", "conformer"))
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", help="write rows and setting here (bench/run_all.py)")
    args = ap.parse_args()
    args.window, args.batch = 2.0, 2
    args.tokens = 16 if args.model == "tiny.en" else 32  # ~2 s of speech in characters
    rows, setting = measure(args)
    report.emit(rows, setting, "python bench/bench_step_switches.py", args.json)


if __name__ == "__main__":
    main()
