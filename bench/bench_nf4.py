"""NF4 quantise/dequantise throughput: pqm_jax against bitsandbytes' CPU path, same run, same data.

Run: python bench/bench_nf4.py [--size 4096] [--repeats 7]
Prints medians and ratios (bitsandbytes time / ours: above 1 means we are faster).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compilation for jax)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import bitsandbytes.functional as bnbf
    import torch

    from pqm_jax.quant import nf4

    x = np.random.default_rng(0).standard_normal((args.size, args.size)).astype(np.float32)
    t = torch.from_numpy(x)
    xj = jax.device_put(x)
    rows = []
    for dq in (False, True):
        ours_q = median_time(
            lambda dq=dq: jax.block_until_ready(nf4.quantize(xj, double_quant=dq)), args.repeats
        )
        bnb_q = median_time(
            lambda dq=dq: bnbf.quantize_4bit(t, quant_type="nf4", compress_statistics=dq),
            args.repeats,
        )
        q = nf4.quantize(xj, double_quant=dq)
        deq = jax.jit(lambda q: q.dequantize())
        ours_d = median_time(lambda q=q, f=deq: jax.block_until_ready(f(q)), args.repeats)
        packed, state = bnbf.quantize_4bit(t, quant_type="nf4", compress_statistics=dq)
        bnb_d = median_time(lambda p=packed, s=state: bnbf.dequantize_4bit(p, s), args.repeats)
        rows.append(("quantise", dq, ours_q, bnb_q))
        rows.append(("dequantise", dq, ours_d, bnb_d))

    n = args.size * args.size
    print(f"# NF4 {args.size}x{args.size}, block 64, median of {args.repeats}")
    print(
        f"# machine: {platform.machine()} {platform.processor() or ''}, jax {jax.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        "| op | double quant | pqm_jax (s) | bitsandbytes (s) | speed-up (bnb/ours) | ours Mweights/s |"
    )
    print("|---|---|---|---|---|---|")
    for op, dq, ours, ref in rows:
        print(
            f"| {op} | {dq} | {ours:.4f} | {ref:.4f} | {ref / ours:.2f}x | {n / ours / 1e6:.0f} |"
        )


if __name__ == "__main__":
    main()
