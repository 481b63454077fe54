"""The native float32 few-rows kernel (`quant.native.rows`): close to the product in float64 in
both layouts, batched and with a shared matrix, for row counts across its register groups and
forced thread splits; None for inputs it does not take; and decoding's attention through it
(`attention._attend_rows`) close to XLA's, masks included."""

from __future__ import annotations

import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import layers
from pqm_jax.models.common import attention as attn
from pqm_jax.quant.native import rows

pytestmark = [
    pytest.mark.usefixtures("native_kernels"),  # tests/quant/conftest.py
    pytest.mark.skipif(not rows.available(), reason="native kernel unavailable (no C++ compiler?)"),
]

TOL = 2e-6  # |kernel - exact| / max |exact| (float32 sums of <= 1,500 products)


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _exact(x, w, transposed):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    w = np.broadcast_to(w, (x.shape[0], *w.shape[1:]))
    return np.einsum("grk,gnk->grn" if transposed else "grk,gkn->grn", x, w)


def _assert_close(ours, exact):
    ours = np.asarray(ours, np.float64)
    assert ours.shape == exact.shape
    assert np.abs(ours - exact).max() <= TOL * np.abs(exact).max()


# (groups, rows, a, b, shared matrix), the matrices [groups or 1, b, a]: rows 1-16 cover every
# register group (1-8, then a second pass); a is a multiple of 16 (the keys' K, the values' N), b
# is anything (the number of keys, the values' K).
CASES = [
    (1, 8, 384, 1000, True),
    (48, 1, 64, 1500, False),
    (6, 3, 64, 37, False),
    (5, 2, 64, 45, False),  # keys of width 64 for 1-2 rows: the streaming tile (OutInTile64)
    (1, 2, 64, 23, True),
    (4, 16, 32, 80, True),
    (2, 13, 48, 17, False),
    (3, 5, 16, 1, False),
]


@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("transposed", [True, False], ids=["keys", "values"])
@pytest.mark.parametrize(("groups", "n_rows", "a", "b", "shared"), CASES)
def test_product_is_close_to_the_exact_one(groups, n_rows, a, b, shared, transposed, threads):
    # Matrices [G or 1, b, a]. Keys: x [G, R, a] @ w[g].T (K = a, a multiple of 16); values:
    # x [G, R, b] @ w[g] (N = a).
    x = _normal((groups, n_rows, a if transposed else b), 1)
    w = _normal((1 if shared else groups, b, a), 2)
    ours = jax.jit(lambda x, w: rows.product(x, w, transposed=transposed, threads=threads))(x, w)
    _assert_close(ours, _exact(x, w, transposed))


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="-mno-avx512f is an x86 flag")
def test_portable_scalar_kernel_is_close(portable_kernel):
    """The same source built without AVX-512 (the loops any CPU runs) is as close, both layouts."""
    name = portable_kernel(rows.SOURCE, "PqmFewRows")
    for groups, n_rows, a, b, shared in CASES[1:4]:
        w = _normal((1 if shared else groups, b, a), 2)
        for transposed, threads in ((True, 1), (False, 3)):
            x = _normal((groups, n_rows, a if transposed else b), 1)
            out = jax.ShapeDtypeStruct((groups, n_rows, b if transposed else a), jnp.float32)
            layout = rows.OUT_IN if transposed else rows.IN_OUT
            call = jax.ffi.ffi_call(name, out)
            ours = call(x, w, layout=np.int64(layout), threads=np.int64(threads))
            _assert_close(ours, _exact(x, w, transposed))


def test_kernel_rejects_mismatched_shapes():
    call = jax.ffi.ffi_call(rows.TARGET, jax.ShapeDtypeStruct((2, 1, 10), jnp.float32))
    with pytest.raises(Exception, match="shapes do not match"):
        keys = jnp.ones((2, 10, 16), jnp.float32)  # K 16, the rows 32
        call(
            jnp.ones((2, 1, 32), jnp.float32),
            keys,
            layout=np.int64(rows.OUT_IN),
            threads=np.int64(0),
        ).block_until_ready()


def test_declines_what_it_does_not_take():
    x, keys = _normal((2, 1, 24), 1), _normal((2, 10, 24), 2)  # K = 24: not a multiple of 16
    assert rows.product(x, keys, transposed=True) is None
    values = _normal((2, 24, 24), 2)  # N = 24
    assert rows.product(x, values, transposed=False) is None
    x16, w16 = _normal((2, 1, 32), 1), _normal((2, 10, 32), 2)
    assert rows.product(x16.astype(jnp.bfloat16), w16, transposed=True) is None
    assert rows.product(x16, _normal((3, 10, 32), 2), transposed=True) is None  # 3 != 2 or 1
    with mock.patch.object(rows, "available", lambda: False):
        assert rows.product(x16, w16, transposed=True) is None


def test_is_lowered_as_the_kernel_and_not_differentiated():
    x, w = _normal((2, 1, 32), 1), _normal((2, 10, 32), 2)
    text = jax.jit(lambda x, w: rows.product(x, w, transposed=True)).lower(x, w).as_text()
    assert rows.TARGET in text
    with pytest.raises(Exception):  # noqa: B017 - decoding only: no derivative rule
        jax.grad(lambda x: rows.product(x, w, transposed=True).sum())(x)


@pytest.mark.parametrize("masked", [False, True])
def test_decoding_attention_through_the_kernel_is_close_to_xla(masked):
    """A decoding step's attention: 6 (row, head) pairs, 1-3 queries over 200 cached positions
    (the last 50 masked out), the kernel's products against XLA's einsums."""
    heads, b, tq, tk, c = 3, 2, 3, 200, 64
    q = _normal((b, tq, heads * c), 5) * c**-0.5
    k, v = _normal((b * heads, tk, c), 6), _normal((b * heads, tk, c), 7)
    mask = (jnp.arange(tk) < 150)[None, None] if masked else None
    xla = attn.attend_flat(q, k, v, mask, heads=heads)
    ours = jax.jit(lambda q, k, v: attn.attend_flat(q, k, v, mask, heads=heads, native=True))
    np.testing.assert_allclose(ours(q, k, v), xla, rtol=0, atol=1e-5)
    assert rows.TARGET in ours.lower(q, k, v).as_text()
    k4, v4 = k.reshape(b, heads, tk, c), v.reshape(b, heads, tk, c)
    cross = jax.jit(lambda q, k, v: attn.attend(q, k, v, None, native=True))
    np.testing.assert_allclose(cross(q, k4, v4), attn.attend(q, k4, v4, None), rtol=0, atol=1e-5)


def test_logits_of_few_rows_through_the_kernel():
    x, table = _normal((2, 3, 64), 8), _normal((500, 64), 9)
    ours = jax.jit(lambda x, t: layers.attend(x, t, native=True))
    np.testing.assert_allclose(ours(x, table), layers.attend(x, table), rtol=0, atol=1e-4)
    assert rows.TARGET in ours.lower(x, table).as_text()
    many = _normal((2, 9, 64), 8)  # 18 rows > layers.FEW_ROWS: XLA's product
    assert rows.TARGET not in ours.lower(many, table).as_text()
