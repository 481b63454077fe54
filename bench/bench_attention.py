"""The encoder's attention (long, unmasked) against XLA's formulation and PyTorch's fused SDPA.

Shapes of Whisper's encoder: [batch * heads, frames, 64] queries, keys and values (tiny.en: 6
heads, 1,500 frames), one layer. In each dtype: ours (`attention._attend_per_head`: the native
kernel on CPU, `quant.native.attention`), XLA's head-by-head formulation (`attention._per_head`,
what ran before the kernel) and `torch.nn.functional.scaled_dot_product_attention` on the same
values, timed in turns (`limits.alternating`). Each of our rows is rated against a matmul of its
dtype measured in the same run (bfloat16: float32 accumulation, AMX where the CPU has it); FLOPs
are the two products', 4 * G * Tq * Tk * 64.

With `--grad`, float32 forward + backward (our backward kernel against XLA's autodiff of its
formulation and torch's SDPA backward). With `--step-windows 8,30`, one speaker's training
step of tiny.en in each `--dtype` (bench_adapt_limit.py's step, batch `--step-batch`) at those
windows, traced with the kernel and with `PQM_NATIVE_ATTENTION=0`, timed in turns in this
process.

Run: python bench/bench_attention.py [--batch 8] [--heads 6] [--frames 1500] [--repeats 7]
     [--dtype float32,bfloat16] [--grad] [--step-windows 8,30] [--step-batch 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import limits
import numpy as np
import report

from pqm_jax.models.common import attention as attn
from pqm_jax.quant.native import attention as native_attention


def contenders(q, k, v, tq, tk, tv) -> dict:
    """Ours, XLA's head-by-head formulation and torch's SDPA on the same values (jax arrays q, k,
    v; torch tensors tq, tk, tv), as calls for `limits.alternating`."""
    import torch

    ours = jax.jit(lambda q, k, v: attn._attend_per_head(q[None], k[None], v[None])[0])
    xla = jax.jit(attn._per_head)
    sdpa = torch.nn.functional.scaled_dot_product_attention  # q is scaled already: scale 1
    return {
        "ours": lambda: ours(q, k, v),
        "xla": lambda: xla(q, k, v),
        "sdpa": lambda: sdpa(tq, tk, tv, scale=1.0),
    }


def grad_contenders(q, k, v, g, tq, tk, tv, tg) -> dict:
    """Forward and backward (the gradients of q, k, v for an output gradient g) of ours, XLA's
    formulation and torch's SDPA."""
    import torch

    def vjp(f):
        return jax.jit(lambda q, k, v, g: jax.vjp(f, q, k, v)[1](g))

    ours = vjp(lambda q, k, v: attn._attend_per_head(q[None], k[None], v[None])[0])
    xla = vjp(attn._per_head)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    leaves = [t.detach().clone().requires_grad_(True) for t in (tq, tk, tv)]

    def torch_grads():
        for t in leaves:
            t.grad = None
        sdpa(*leaves, scale=1.0).backward(tg)
        return [t.grad for t in leaves]

    return {
        "ours": lambda: ours(q, k, v, g),
        "xla": lambda: xla(q, k, v, g),
        "sdpa": torch_grads,
    }


def measure(batch: int, heads: int, frames: int, repeats: int, dtypes: list[str]):
    import torch

    rows = []
    g = batch * heads
    flops = 4.0 * g * frames * frames * 64
    rng = np.random.default_rng(0)
    base = [rng.standard_normal((g, frames, 64)).astype(np.float32) * s for s in (0.4, 0.4, 1.0)]
    for name in dtypes:
        dtype = jnp.dtype(name)
        q, k, v = (jnp.asarray(a).astype(dtype) for a in base)
        tq, tk, tv = (torch.from_numpy(a).to(getattr(torch, name)) for a in base)
        calls = contenders(q, k, v, tq, tk, tv)
        times = limits.alternating(calls, repeats)
        rate = limits.matmul_rate(dtype=name)
        limit = flops / statistics.median(times["ours"]) / rate
        limit_name = limits.describe_rate(rate, name)
        err = np.abs(
            np.asarray(calls["ours"]().astype(jnp.float32))
            - np.asarray(calls["xla"]().astype(jnp.float32))
        ).max()
        route = "native kernel" if native_attention.supports(dtype) else "XLA (no kernel here)"
        figure = f"attention {name} [{g}, {frames}, 64] x [{g}, {frames}, 64]"
        note = f"ours: {route}; max |ours - XLA's| {err:.2g}"
        for peer, peer_name in (("xla", "XLA head by head"), ("sdpa", "torch SDPA")):
            rows.append(
                report.row(
                    figure,
                    times["ours"],
                    times[peer],
                    peer_name=peer_name,
                    unit="s",
                    better="lower",
                    note=note,
                    limit=limit,
                    limit_name=limit_name,
                )
            )
    return rows


def measure_grad(batch: int, heads: int, frames: int, repeats: int) -> list[report.Row]:
    """float32 forward + backward; FLOPs: forward 4 G T^2 64, backward 10 G T^2 64 (scores
    recomputed, then four products), as the kernel does them (XLA keeps the weights instead)."""
    import torch

    g = batch * heads
    rng = np.random.default_rng(1)
    base = [rng.standard_normal((g, frames, 64)).astype(np.float32) * s for s in (0.4, 0.4, 1, 1)]
    q, k, v, dout = (jnp.asarray(a) for a in base)
    calls = grad_contenders(q, k, v, dout, *(torch.from_numpy(a) for a in base))
    times = limits.alternating(calls, repeats)
    rate = limits.matmul_rate(dtype="float32")
    flops = 14.0 * g * frames * frames * 64
    ours, xla = calls["ours"](), calls["xla"]()
    err = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ours, xla))
    route = "native kernels" if native_attention.supports(jnp.float32) else "XLA (no kernel here)"
    rows = []
    for peer, peer_name in (("xla", "XLA head by head"), ("sdpa", "torch SDPA")):
        rows.append(
            report.row(
                f"attention float32 forward + backward [{g}, {frames}, 64]",
                times["ours"],
                times[peer],
                peer_name=peer_name,
                unit="s",
                better="lower",
                note=f"ours: {route}; max |ours - XLA's| over dq, dk, dv {err:.2g}",
                limit=flops / statistics.median(times["ours"]) / rate,
                limit_name=limits.describe_rate(rate, "float32"),
            )
        )
    return rows


def measure_step(window: float, batch: int, repeats: int, dtype: str) -> list[report.Row]:
    """One speaker's training step of tiny.en at `window` seconds, activations in `dtype` (the
    adaptation step of bench_adapt_limit.py, batch `batch`), traced with the kernel and with
    `PQM_NATIVE_ATTENTION=0` (XLA's attention), timed in turns in this process. (In bfloat16
    the kernels' gradients are the float32 ones on widened inputs.)"""

    import bench_adapt_limit

    base, cfg = bench_adapt_limit._base("tiny.en", "none", window)
    shape = bench_adapt_limit.StepShape(window=window, batch=batch)
    programs = {}
    for name, switch in (("ours", "1"), ("xla", "0")):
        with limits.switches(PQM_NATIVE_ATTENTION=switch):  # read when a program is traced
            programs[name] = bench_adapt_limit._program(base, cfg, 1, shape, dtype)
    routes = {name: "pqm_attention" in c.as_text() for name, (c, _) in programs.items()}
    if routes != {"ours": True, "xla": False}:
        raise RuntimeError(f"the two programs do not differ as meant: kernel in {routes}")
    calls = {name: (lambda c=c, a=a: c(*a)) for name, (c, a) in programs.items()}
    times = limits.alternating(calls, repeats)
    rate = limits.matmul_rate(dtype=dtype)
    flops = bench_adapt_limit.model_flops(base, cfg, 1, shape)
    return [
        report.row(
            f"training step, tiny.en, {window:g} s window, batch {batch}, LoRA r 8, {dtype}",
            times["ours"],
            times["xla"],
            peer_name="same step with XLA's attention (PQM_NATIVE_ATTENTION=0)",
            unit="s",
            better="lower",
            note=f"{flops / 1e9:.1f} GFLOP (XLA's count with XLA's products only, heads batched)",
            limit=flops / statistics.median(times["ours"]) / rate,
            limit_name=limits.describe_rate(rate, dtype),
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32,bfloat16")
    ap.add_argument("--grad", action="store_true", help="also forward + backward (float32)")
    ap.add_argument("--step-windows", default="", help="e.g. 8,30: training steps at these")
    ap.add_argument("--step-batch", type=int, default=8)
    ap.add_argument("--json", help="also write the rows here (for bench/run_all.py)")
    args = ap.parse_args()

    import torch

    dtypes = [d for d in args.dtype.split(",") if d]
    rows = measure(args.batch, args.heads, args.frames, args.repeats, dtypes)
    if args.grad:
        rows += measure_grad(args.batch, args.heads, args.frames, args.repeats)
    for window in [float(w) for w in args.step_windows.split(",") if w]:
        for dtype in dtypes:
            rows += measure_step(window, args.step_batch, args.repeats, dtype)
    if args.json:
        setting = [
            f"batch {args.batch} x {args.heads} heads, {args.frames} frames, head size 64, "
            f"standard normal values (queries and keys x 0.4); jax on {jax.devices()[0].platform},"
            f" torch SDPA with {torch.get_num_threads()} threads; in turns, one untimed call each",
            "limit: the two products' FLOPs (4 G T^2 64) per second over a jitted 2048^2 matmul "
            "of the row's dtype (float32 accumulation) measured in the same run",
        ]
        report.dump(args.json, rows, setting)
    print(
        f"# encoder attention, batch {args.batch} x {args.heads} heads, {args.frames} frames, "
        f"median of {args.repeats}; caps {native_attention.caps()}"
    )
    print("| figure | peer | ours (s) | peer (s) | reading | ours: of machine limit | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.figure} | {r.peer_name} | {r.ours:.4f} | {r.peer:.4f} | {report.reading(r)} "
            f"| {report.limit_cell(r)} | {r.note} |"
        )


if __name__ == "__main__":
    main()
