"""The machine's own limits, measured in the benchmark's process: matmul rate and copy bandwidth.

A compute-bound figure is reported as model FLOPs per second (XLA's `cost_analysis`) over the
rate of one large jitted matmul measured in the same run; a memory-bound one as bytes moved per
second over a jitted streaming copy of the same size. A limit is what the machine can do, so
both take the fastest of a few calls after a warm-up (noise only ever slows a call down), on
JAX's default device, in the dtype that device runs fastest (float32 on CPU, bfloat16 on an
accelerator) unless told.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def default_dtype() -> str:
    return "float32" if jax.devices()[0].platform == "cpu" else "bfloat16"


def seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `fn` (blocked until ready), after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def alternating(
    fns: dict[str, Callable[[], object]], repeats: int, per_turn: int = 3
) -> dict[str, list[float]]:
    """Wall times of `repeats` calls of each of `fns`, taken in turns of `per_turn` calls (the
    order of the turns reversed every round). Each turn starts with one untimed call, which
    absorbs what the previous function left behind: torch's OpenMP workers spin on the cores for
    milliseconds after an op, and measured back to back they made our next dequantise 1.4x
    slower. Taking turns lets a slow minute of a shared machine fall on all of `fns` alike."""
    times = {name: [] for name in fns}
    for i in range(-(-repeats // per_turn)):
        for name in list(fns)[:: -1 if i % 2 else 1]:
            jax.block_until_ready(fns[name]())
            for _ in range(min(per_turn, repeats - len(times[name]))):
                t = time.perf_counter()
                jax.block_until_ready(fns[name]())
                times[name].append(time.perf_counter() - t)
    return times


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, after one warm-up."""
    return statistics.median(seconds(fn, repeats))


def matmul_rate(n: int = 2048, repeats: int = 7, dtype: str | None = None) -> float:
    """FLOP/s of a jitted [n, n] @ [n, n] matmul (2 n^3 FLOPs), the fastest of `repeats`.
    Accumulated in float32 (as `layers.matmul` multiplies bfloat16): XLA's CPU backend runs a
    bfloat16 product with a bfloat16 result on its vector units, 6.5x slower than on AMX."""
    dtype = dtype or default_dtype()
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)), dtype)
    b = jnp.asarray(rng.standard_normal((n, n)), dtype)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    return 2.0 * n**3 / min(seconds(lambda: f(a, b), repeats))


def copy_bandwidth(nbytes: int = 64 << 20, repeats: int = 7) -> float:
    """Bytes/s of a jitted streaming pass (read float32 x, write x + 1): 2 * nbytes per call,
    a fresh output buffer each time, as a dequantisation writes one; the fastest of `repeats`."""
    x = jnp.zeros((nbytes // 4,), jnp.float32)
    f = jax.jit(lambda v: v + 1.0)
    return 2.0 * nbytes / min(seconds(lambda: f(x), repeats))


@contextlib.contextmanager
def switches(**env: str):
    """Programs traced inside see the environment switches `env` (the native kernels read theirs,
    e.g. PQM_NATIVE_ATTENTION, when a program is traced); the caller's values come back on exit.
    Jit caches (the library's and jax's) are cleared on entry and exit, so programs are traced
    afresh inside, and the caller's own are traced again with its switches afterwards."""
    from pqm_jax import jit_cache

    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    jit_cache.clear()
    jax.clear_caches()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        jit_cache.clear()
        jax.clear_caches()


def xla_only():
    """Programs traced inside run XLA's products only (`PQM_NATIVE=0`), so that XLA's cost
    analysis counts all their model FLOPs: it does not see inside the native kernels' FFI calls
    (the 4-bit products, the attention kernel). Long attention is one batched product there
    (`PQM_ATTENTION_LOOP=0`), not a loop over heads, whose body the cost analysis counts once:
    a 30 s window's encoder counted 36% short that way (tiny.en: 24 of 38 GFLOP)."""
    return switches(PQM_NATIVE="0", PQM_ATTENTION_LOOP="0")


def flops(program) -> float:
    """Model FLOPs of one call of a compiled (or only lowered: no compilation needed) program,
    from XLA's cost analysis (0 if unknown)."""
    cost = program.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per device program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def describe_rate(rate: float, dtype: str | None = None) -> str:
    return f"{rate / 1e9:.1f} GFLOP/s ({dtype or default_dtype()} matmul)"
