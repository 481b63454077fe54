"""bench/limits.py's turn-taking timer: who is called when, and how many times are kept (the
times themselves are not asserted)."""

from __future__ import annotations

import importlib.util
import pathlib

_PATH = pathlib.Path(__file__).resolve().parent.parent / "bench" / "limits.py"
_SPEC = importlib.util.spec_from_file_location("bench_limits", _PATH)
limits = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(limits)


def test_alternating_takes_turns_in_reversed_order_with_one_untimed_call_each():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = limits.alternating(fns, repeats=7, per_turn=3)
    assert {name: len(t) for name, t in times.items()} == {"a": 7, "b": 7, "c": 7}
    assert all(t >= 0.0 for ts in times.values() for t in ts)
    # three rounds: a b c, then c b a, then a b c; each turn 1 untimed + 3, 3 and 1 timed calls
    turns = [("a", 4), ("b", 4), ("c", 4), ("c", 4), ("b", 4), ("a", 4)]
    turns += [("a", 2), ("b", 2), ("c", 2)]
    assert calls == [name for name, n in turns for _ in range(n)]


def test_xla_only_counts_every_head_of_long_attention():
    """XLA's cost analysis counts a loop's body once: long attention, a loop over (batch, head)
    pairs when it runs, is counted as one batched product under `xla_only`."""
    import jax
    import jax.numpy as jnp

    from pqm_jax.models.common import attention

    b, heads, t, c = 2, 3, 300, 64  # 300 x 300 positions: the long (per-head) formulation
    assert t * t >= attention.LONG_ATTENTION
    q = jax.ShapeDtypeStruct((b, t, heads * c), jnp.float32)
    kv = jax.ShapeDtypeStruct((b, heads, t, c), jnp.float32)
    products = 2 * (2 * b * heads * t * t * c)  # scores and values

    def count() -> float:
        fn = jax.jit(lambda q, k, v: attention.attend(q, k, v, None))
        return limits.flops(fn.lower(q, kv, kv))

    with limits.switches(PQM_NATIVE="0"):
        looped = count()
    with limits.xla_only():
        counted = count()
    assert products <= counted < 1.1 * products
    assert looped < products / 2  # the loop's body once: what `xla_only` corrects
