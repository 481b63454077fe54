"""The native long-attention kernel (`quant.native.attention`): float32 close to softmax attention
in float64, bfloat16 (AMX tiles and AVX512-BF16 pairs) close to it with the weights rounded to
bfloat16 as XLA's path rounds them, for query and key counts off every block size and forced
thread splits; the encoder's attention lowered to it, its derivatives to the float32 backward kernel (close to
exact gradients; bfloat16 inputs widened, closer to float32 than XLA's bfloat16 path); None
for inputs it does not take; a build without AVX-512 says so."""

from __future__ import annotations

import ctypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.models.common import attention as attn
from pqm_jax.quant.native import attention as native_attention

pytestmark = [
    pytest.mark.usefixtures("native_kernels"),  # tests/quant/conftest.py
    pytest.mark.skipif(
        not native_attention.caps() & native_attention.CAPS[native_attention.F32],
        reason="native attention unavailable (no C++ compiler or no AVX-512)",
    ),
]
HAS_BF16 = bool(native_attention.caps() & native_attention.CAPS[native_attention.BF16])
HAS_AMX = bool(native_attention.caps() & native_attention.AMX)

# (groups, query rows, keys): rows off the 6- and 16-row tiles and the 240-row work units, keys
# off the 16- and 64-key blocks (odd counts pad a bfloat16 pair), one key.
CASES = [(3, 37, 101), (2, 250, 64), (1, 17, 1), (4, 6, 333), (2, 481, 130)]


def _qkv(groups, tq, tk, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((groups, tq, 64)) * 0.4  # scores of a few units, as a trained model's
    k = rng.standard_normal((groups, tk, 64)) * 0.4
    v = rng.standard_normal((groups, tk, 64))
    return tuple(jnp.asarray(a, jnp.float32).astype(dtype) for a in (q, k, v))


def _exact(q, k, v, round_weights=False):
    """Softmax attention in float64; with `round_weights` the exponentials are rounded to bfloat16
    before the value product (their sum is not), as `attention._per_head` does in bfloat16."""
    q, k, v = (np.asarray(jnp.asarray(a, jnp.float32), np.float64) for a in (q, k, v))
    s = np.einsum("gqc,gkc->gqk", q, k)
    e = np.exp(s - s.max(-1, keepdims=True))
    w = e
    if round_weights:
        w = np.asarray(jnp.asarray(e, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32))
    return np.einsum("gqk,gkc->gqc", w, v) / e.sum(-1, keepdims=True)


def _kernel(q, k, v, **kw):
    out = jax.jit(lambda q, k, v: native_attention.attend(q, k, v, xla=attn._per_head, **kw))
    return out(q, k, v)


@pytest.mark.parametrize("threads", [0, 1, 2])
@pytest.mark.parametrize(("groups", "tq", "tk"), CASES)
def test_float32_is_close_to_exact_attention(groups, tq, tk, threads):
    q, k, v = _qkv(groups, tq, tk, jnp.float32)
    ours = _kernel(q, k, v, threads=threads)
    assert ours.dtype == jnp.float32 and ours.shape == (groups, tq, 64)
    exact = _exact(q, k, v)
    assert np.abs(np.asarray(ours, np.float64) - exact).max() <= 2e-6 * np.abs(exact).max()


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16")
@pytest.mark.parametrize("tiles", [True, False], ids=["amx", "pairs"])
@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize(("groups", "tq", "tk"), CASES)
def test_bfloat16_is_close_to_attention_with_bfloat16_weights(groups, tq, tk, threads, tiles):
    q, k, v = _qkv(groups, tq, tk, jnp.bfloat16, seed=1)
    ours = _kernel(q, k, v, threads=threads, tiles=tiles)
    assert ours.dtype == jnp.bfloat16 and ours.shape == (groups, tq, 64)
    exact = _exact(q, k, v, round_weights=True)
    # Products of bfloat16 inputs are exact in float32; what differs from float64 is the order
    # of float32 sums, the exponentials' last bits (a weight may round to the other bfloat16
    # neighbour) and the output's rounding to bfloat16 (2**-9 relative).
    err = np.abs(np.asarray(ours.astype(jnp.float32), np.float64) - exact)
    assert err.max() <= 2**-8 * np.abs(exact).max()
    # ... and as close as XLA's own bfloat16 path is.
    xla = np.asarray(jax.jit(attn._per_head)(q, k, v).astype(jnp.float32), np.float64)
    assert err.max() <= 2 * np.abs(xla - exact).max() + 1e-6


@pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX tile unit (or Linux refused it)")
def test_amx_and_pairs_agree_on_whisper_shapes():
    """tiny.en's encoder attention at batch 1 (6 heads, 1,500 frames): both bfloat16 routes."""
    q, k, v = _qkv(6, 1500, 1500, jnp.bfloat16, seed=2)
    amx = np.asarray(_kernel(q, k, v, tiles=True).astype(jnp.float32))
    pairs = np.asarray(_kernel(q, k, v, tiles=False).astype(jnp.float32))
    assert np.abs(amx - pairs).max() <= 2**-7 * np.abs(pairs).max()


def _loss(f):
    return lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v).astype(jnp.float32)))


def _grads(f, q, k, v):
    grad = jax.jit(jax.grad(_loss(f), argnums=(0, 1, 2)))
    return grad(q, k, v), grad.lower(q, k, v).as_text()


def _flat(f, groups):
    return lambda q, k, v: f(*(a.reshape(groups, -1, 64) for a in (q, k, v)))


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize(("groups", "tq", "tk"), CASES)
def test_float32_gradients_are_close_to_exact_ones(groups, tq, tk, threads):
    """The backward kernel against float64 autodiff-free gradients of softmax attention."""
    q, k, v = _qkv(groups, tq, tk, jnp.float32, seed=5)
    rng = np.random.default_rng(6)
    g = jnp.asarray(rng.standard_normal((groups, tq, 64)), jnp.float32)
    f = lambda q, k, v: native_attention.attend(q, k, v, xla=attn._per_head, threads=threads)
    _, pullback = jax.vjp(f, q, k, v)
    ours = jax.jit(pullback)(g)
    # Exact: p = softmax(q k^T); dv = p^T g; dp = g v^T; ds = p (dp - rowsum(dp p)); dq = ds k;
    # dk = ds^T q.
    q64, k64, v64, g64 = (np.asarray(a, np.float64) for a in (q, k, v, g))
    s = np.einsum("gqc,gkc->gqk", q64, k64)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = np.einsum("gqc,gkc->gqk", g64, v64)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    exact = (
        np.einsum("gqk,gkc->gqc", ds, k64),
        np.einsum("gqk,gqc->gkc", ds, q64),
        np.einsum("gqk,gqc->gkc", p, g64),
    )
    for name, a, e in zip("qkv", ours, exact, strict=True):
        assert a.shape == e.shape, name
        # (with one key the q and k gradients are exactly 0; ours are rounding residue)
        assert np.abs(np.asarray(a, np.float64) - e).max() <= 1e-5 * max(np.abs(e).max(), 1), name


def test_encoder_attention_runs_both_passes_in_the_kernel_in_float32():
    q, k, v = (a.reshape(1, 2, 300, 64) for a in _qkv(2, 300, 300, jnp.float32, seed=3))
    assert 300 * 300 >= attn.LONG_ATTENTION  # the encoder's path (`_attend_per_head`)
    assert "pqm_attention_f32" in jax.jit(attn._attend_per_head).lower(q, k, v).as_text()
    ours, program = _grads(attn._attend_per_head, q, k, v)
    assert native_attention.GRAD_TARGET in program and "pqm_attention_f32" in program
    xla, _ = _grads(_flat(attn._per_head, 2), q, k, v)
    for a, b in zip(ours, xla, strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * np.abs(np.asarray(b)).max()


def test_short_unmasked_attention_runs_in_the_kernel_too(monkeypatch):
    """`attend` below LONG_ATTENTION (a 2 s window's 100 frames; 16 tokens over them): the
    kernel forward and backward when unmasked, close to XLA's batched formulation; never masked."""
    rng = np.random.default_rng(7)
    cases = [(2, 100, 100), (2, 16, 100), (3, 1, 7)]  # (batch, queries, keys), 2 heads of 64
    for b, tq, tk in cases:
        assert tq * tk < attn.LONG_ATTENTION
        q = jnp.asarray(rng.standard_normal((b, tq, 128)) * 0.4, jnp.float32)
        k, v = (jnp.asarray(rng.standard_normal((b, 2, tk, 64)), jnp.float32) for _ in "kv")
        mask = jnp.asarray(rng.random((1, 1, tq, tk)) < 0.8).at[..., 0].set(True)
        loss = lambda q, k, v, m=None: jnp.sum(jnp.sin(attn.attend(q, k, v, m)))
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        program = grad.lower(q, k, v).as_text()
        assert "pqm_attention_f32" in program and native_attention.GRAD_TARGET in program
        assert "pqm_attention" not in jax.jit(loss).lower(q, k, v, mask).as_text()
        ours = grad(q, k, v)
        monkeypatch.setenv("PQM_NATIVE_ATTENTION", "0")
        xla = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
        monkeypatch.setenv("PQM_NATIVE_ATTENTION", "1")
        for a, b_ in zip(jax.tree.leaves(ours), jax.tree.leaves(xla), strict=True):
            a, b_ = np.asarray(a), np.asarray(b_)
            assert np.abs(a - b_).max() <= 1e-5 * max(np.abs(b_).max(), 1.0), (b, tq, tk)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16")
@pytest.mark.parametrize("shape", [(1, 2, 300), (3, 2, 100)], ids=["long", "short"])
def test_bfloat16_gradients_run_the_float32_kernels_on_widened_inputs(shape):
    """Under differentiation bfloat16 attention runs the float32 forward and backward kernels
    on widened inputs: its gradients (the loss's cotangent arrives in bfloat16) are no further
    from float32 ones than XLA's own bfloat16 formulation's."""
    b, heads, t = shape
    q, k, v = (a.reshape(b, heads, t, 64) for a in _qkv(b * heads, t, t, jnp.bfloat16, seed=3))
    f = attn._attend_per_head if t * t >= attn.LONG_ATTENTION else attn._attend_fused
    ours, program = _grads(f, q, k, v)
    assert native_attention.GRAD_TARGET in program and "pqm_attention_f32" in program
    assert all(a.dtype == jnp.bfloat16 for a in ours)
    wide = [a.astype(jnp.float32) for a in (q, k, v)]
    exact, _ = _grads(_flat(attn._batched, b * heads), *wide)
    xla, _ = _grads(_flat(attn._batched, b * heads), q, k, v)
    for a, x, e in zip(ours, xla, exact, strict=True):
        a, x, e = (np.asarray(y, np.float32) for y in (a, x, e))
        assert np.abs(a - e).max() <= 2.0**-7 * np.abs(e).max()
        rms = lambda d: float(np.sqrt(np.mean(np.square(d))))
        assert rms(a - e) <= 1.05 * rms(x - e)


def test_inputs_it_does_not_take_give_none():
    q, k, v = _qkv(2, 20, 30, jnp.float32)
    take = lambda *a: native_attention.attend(*a, xla=attn._per_head)
    assert take(q[..., :32], k[..., :32], v[..., :32]) is None  # head size 32
    assert take(q, k.astype(jnp.bfloat16), v) is None  # mixed dtypes
    assert take(q, k[:1], v[:1]) is None  # groups differ
    assert take(q, k[:, :0], v[:, :0]) is None  # no keys
    assert take(q.astype(jnp.float16), k.astype(jnp.float16), v.astype(jnp.float16)) is None


def test_with_native_off_it_gives_none(monkeypatch):
    monkeypatch.setenv("PQM_NATIVE", "0")
    monkeypatch.setattr(jax, "device_count", lambda: 2)  # and several devices: XLA's path
    q, k, v = _qkv(2, 20, 30, jnp.float32)
    assert native_attention.attend(q, k, v, xla=attn._per_head) is None


def test_the_attention_switch_turns_this_kernel_alone_off(monkeypatch):
    q, k, v = _qkv(2, 20, 30, jnp.float32)
    monkeypatch.setenv("PQM_NATIVE_ATTENTION", "0")
    assert native_attention.attend(q, k, v, xla=attn._per_head) is None
    program = jax.jit(attn._attend_per_head).lower(*(a[None] for a in (q, k, v))).as_text()
    assert "pqm_attention" not in program
    monkeypatch.setenv("PQM_NATIVE_ATTENTION", "1")
    assert native_attention.attend(q, k, v, xla=attn._per_head) is not None


def test_a_build_without_avx512_says_it_can_do_nothing(tmp_path):
    from pqm_jax.quant.native import build

    flags = (*build.FLAGS, "-mno-avx512f")
    lib = build.load(native_attention.SOURCE, cxx=build.compiler(), cache=tmp_path, flags=flags)
    lib.PqmAttentionCaps.restype = ctypes.c_int32
    assert lib.PqmAttentionCaps() == 0


def test_under_vmap_each_element_is_its_own_attention():
    """A bank of speakers' encoders (vmap over a leading axis): one kernel call takes every
    element (no loop in the program), forward and backward."""
    q, k, v = (a.reshape(3, 1, 2, 40, 64) for a in _qkv(6, 40, 40, jnp.float32, seed=4))
    f = jax.jit(jax.vmap(attn._attend_per_head))
    program = f.lower(q, k, v).as_text()
    assert program.count("pqm_attention_f32") == 1 and "while" not in program
    ours = np.asarray(f(q, k, v), np.float64)
    exact = _exact(*(a.reshape(6, 40, 64) for a in (q, k, v))).reshape(ours.shape)
    assert np.abs(ours - exact).max() <= 2e-6 * np.abs(exact).max()
    banked, program = _grads(jax.vmap(attn._attend_per_head), q, k, v)
    assert native_attention.GRAD_TARGET in program and "while" not in program
    one_by_one, _ = _grads(_flat(attn._per_head, 6), q, k, v)
    for a, b in zip(banked, one_by_one, strict=True):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * np.abs(np.asarray(b)).max()
