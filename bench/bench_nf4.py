"""NF4 quantise/dequantise throughput: pqm_jax against bitsandbytes' CPU path, same run, same data.

Run: python bench/bench_nf4.py [--size 4096] [--repeats 7] [--json rows.json]
Prints medians and ratios (bitsandbytes time / ours: above 1 means we are faster); `measure`
returns the same as `report.Row`s (ours / peer), which `--json` writes for bench/run_all.py.
Ours and the peer are timed in turns (`limits.alternating`; for dequantise with a third: XLA
filling a fresh matrix of the output's size, the floor for any op that returns one).
"""

from __future__ import annotations

import argparse
import platform
import statistics

import jax
import jax.numpy as jnp
import limits
import numpy as np
import report


def measure(size: int, repeats: int) -> list[report.Row]:
    """Quantise and dequantise a [size, size] float32 matrix (block 64), with and without
    double quantisation: ours (jitted, on JAX's default device) against bitsandbytes on CPU."""
    import bitsandbytes.functional as bnbf
    import torch

    from pqm_jax.quant import nf4

    x = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    t = torch.from_numpy(x)
    xj = jax.device_put(x)
    bandwidth = limits.copy_bandwidth(x.nbytes, repeats)
    limit_name = f"{bandwidth / 1e9:.1f} GB/s streaming copy"
    # The floor for any op that returns a new float32 matrix: XLA filling a fresh one.
    fill = jax.jit(lambda c: jnp.full((size, size), c, jnp.float32))
    rows = []
    for dq in (False, True):
        q = nf4.quantize(xj, double_quant=dq)
        packed, state = bnbf.quantize_4bit(t, quant_type="nf4", compress_statistics=dq)
        deq = jax.jit(lambda q: q.dequantize())
        quantise = limits.alternating(
            {
                "ours": lambda dq=dq: nf4.quantize(xj, double_quant=dq),
                "peer": lambda dq=dq: bnbf.quantize_4bit(
                    t, quant_type="nf4", compress_statistics=dq
                ),
            },
            repeats,
        )
        dequantise = limits.alternating(
            {
                "ours": lambda q=q, f=deq: f(q),
                "peer": lambda p=packed, s=state: bnbf.dequantize_4bit(p, s),
                "fill": lambda: fill(np.float32(1.0)),
            },
            repeats,
        )
        floor = statistics.median(dequantise["fill"])
        moved = x.nbytes + sum(leaf.nbytes for leaf in jax.tree.leaves(q))  # read + write
        for op, measured in (("quantise", quantise), ("dequantise", dequantise)):
            ours = measured["ours"]
            note = (
                f"a fresh {size}x{size} float32 fill (jitted jnp.full, same run) takes "
                f"{floor:.4g} s: ours {statistics.median(ours) / floor:.2f}x of it"
                if op == "dequantise"
                else ""
            )
            rows.append(
                report.row(
                    f"NF4 {op} {size}x{size}, block 64, double quant {'on' if dq else 'off'}",
                    ours,
                    measured["peer"],
                    peer_name="bitsandbytes CPU",
                    unit="s",
                    better="lower",
                    note=note,
                    limit=moved / statistics.median(ours) / bandwidth,
                    limit_name=limit_name,
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the rows here (for bench/run_all.py)")
    args = ap.parse_args()

    import torch

    from pqm_jax.quant import native

    path = "native FFI kernel" if native.available() else "XLA (PQM_NATIVE=0 or no compiler)"
    rows = measure(args.size, args.repeats)
    if args.json:
        setting = [
            f"{args.size}x{args.size} float32 standard normal; our jitted quantise/dequantise on "
            f"{jax.devices()[0].platform}, bitsandbytes' CPU path with {torch.get_num_threads()} "
            "torch threads; one warm-up call each, excluded",
            "limit: bytes moved (float32 matrix + codes + absmax, read and written once) per "
            "second over a jitted streaming copy (read x, write x + 1) of the matrix's size",
            f"our CPU dequantise path: {path}",
        ]
        report.dump(args.json, rows, setting)
    n = args.size * args.size
    print(f"# NF4 {args.size}x{args.size}, block 64, median of {args.repeats}")
    print(
        f"# machine: {platform.machine()} {platform.processor() or ''}, jax {jax.__version__}, "
        f"torch threads {torch.get_num_threads()}; our CPU dequantise path: {path}"
    )
    print(
        "| op | double quant | pqm_jax (s) | bitsandbytes (s) | speed-up (bnb/ours) "
        "| ours Mweights/s | note |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        op, dq = r.figure.split()[1], r.figure.endswith("on")
        print(
            f"| {op} | {dq} | {r.ours:.4f} | {r.peer:.4f} | {1 / r.ratio:.2f}x | "
            f"{n / r.ours / 1e6:.0f} | {r.note} |"
        )


if __name__ == "__main__":
    main()
