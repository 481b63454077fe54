"""The native 4-bit matrix-times-few-rows kernel: close to the product by the dequantised weight
(computed in float64) in both layouts, for NF4 and FP4, with and without double quantisation,
under jit, vmap, grad and forced thread splits; lowered by `layers` for few rows only; and a clean
fallback to XLA when it is switched off or does not take the inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import layers
from pqm_jax import lora as lora_lib
from pqm_jax.quant import fp4, native, nf4
from pqm_jax.quant import tree as qtree
from pqm_jax.quant.native import matvec

needs_kernel = pytest.mark.skipif(
    not matvec.available(), reason="native kernel unavailable (no C++ compiler?)"
)


pytestmark = pytest.mark.usefixtures("native_kernels")  # tests/quant/conftest.py


# (rows, in K, out N); weights [K, N] ("in-out") or stored [N, K] ("out-in", PyTorch's layout).
SHAPES = [(1, 384, 384), (3, 384, 1536), (8, 1536, 384), (16, 384, 1024), (5, 96, 64)]
TOL = 2e-6  # |kernel - exact| / |exact| (float32 sums over K <= 1536 products: ~1e-7 typical)


def _weight(mod, layout, k, n, *, block=64, double_quant=False, seed=0):
    """A 4-bit [k, n] weight as `matmul` takes it, and its dequantised float64 copy [k, n]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    if layout == "in-out":
        q = mod.quantize(w, block_size=block, double_quant=double_quant)
    else:
        q = qtree.Transposed(inner=mod.quantize(w.T, block_size=block, double_quant=double_quant))
    return q, np.asarray(q.dequantize(), np.float64)


def _rows(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _assert_close(ours, exact, tol=TOL):
    ours = np.asarray(ours, np.float64)
    assert ours.shape == exact.shape
    err = np.linalg.norm(ours - exact) / np.linalg.norm(exact)
    assert err < tol, err
    np.testing.assert_allclose(ours, exact, rtol=0, atol=tol * np.abs(exact).max() * 10)


def _lowered(fn, *args) -> bool:
    return matvec.TARGET in jax.jit(fn).lower(*args).as_text()


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("mod", [nf4, fp4])
@pytest.mark.parametrize("layout", ["in-out", "out-in"])
@pytest.mark.parametrize(("rows", "k", "n"), SHAPES)
def test_matmul_is_close_to_the_dequantised_product(rows, k, n, layout, mod, double_quant):
    q, w = _weight(mod, layout, k, n, double_quant=double_quant, seed=k + n)
    x = _rows((rows, k))
    exact = np.asarray(x, np.float64) @ w
    ours = jax.jit(matvec.matmul)(x, q)
    _assert_close(ours, exact)
    _assert_close(matvec.matmul(x, q), exact)  # eager too
    assert _lowered(matvec.matmul, x, q)


@needs_kernel
@pytest.mark.parametrize("layout", ["in-out", "out-in"])
def test_every_row_count_and_tail(layout):
    """1..16 rows (every register-group size and the second pass over the weights) against
    output sizes that leave tails of every tile (n = 32 * 7 + vector tails of table rows)."""
    k, n = 128, 224
    q, w = _weight(nf4, layout, k, n, block=32)
    for rows in range(1, 17):
        x = _rows((rows, k), seed=rows)
        _assert_close(jax.jit(matvec.matmul)(x, q), np.asarray(x, np.float64) @ w)


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("vocab", [1000, 51864])
def test_attend_is_close_to_logits_against_the_dequantised_table(vocab, double_quant):
    table = nf4.quantize(
        np.random.default_rng(vocab).standard_normal((vocab, 384)).astype(np.float32) * 0.05,
        double_quant=double_quant,
    )
    dense = np.asarray(table.dequantize(), np.float64)
    x = _rows((2, 4, 384))  # leading dims flatten to 8 rows
    ours = jax.jit(matvec.attend)(x, table)
    assert ours.shape == (2, 4, vocab)
    _assert_close(ours, np.asarray(x, np.float64) @ dense.T)
    # Through layers.attend, as the decoder calls it.
    marked = matvec.stream(table)
    _assert_close(jax.jit(layers.attend)(x, marked), np.asarray(x, np.float64) @ dense.T)
    assert _lowered(layers.attend, x, marked)
    assert not _lowered(layers.attend, x, table)  # unmarked (training): the XLA product


@needs_kernel
def test_blocks_running_across_rows():
    """Blocks of 64 over rows of 96 (and of 32 columns over rows of 224): a block starts
    mid-row, so each load must find its own block's absmax."""
    for layout, k, n in (("out-in", 96, 40), ("in-out", 40, 96)):
        q, w = _weight(fp4, layout, k, n, block=64, double_quant=True)
        x = _rows((4, k))
        _assert_close(jax.jit(matvec.matmul)(x, q), np.asarray(x, np.float64) @ w)


@needs_kernel
@pytest.mark.parametrize("layout", ["in-out", "out-in"])
def test_thread_splits_give_the_same_bits(layout):
    """Each output's sum runs in the same order whichever thread computes it, and helpers on
    XLA's pool flush denormals as the caller does."""
    q, _ = _weight(nf4, layout, 384, 1536, block=128)
    x = _rows((5, 384))
    outs = [
        np.asarray(jax.jit(lambda x, q, t=t: matvec.matmul(x, q, threads=t))(x, q))
        for t in (1, 2, 3, 7)
    ]
    for other in outs[1:]:
        np.testing.assert_array_equal(other.view(np.uint32), outs[0].view(np.uint32))


@needs_kernel
@pytest.mark.parametrize("layout", ["in-out", "out-in"])
def test_a_row_does_not_depend_on_the_other_rows(layout):
    """Each row's sums run in the same order whatever the batch around it (so a decoding row
    gives the same tokens alone and in a batch)."""
    q, _ = _weight(nf4, layout, 384, 448)
    x = _rows((11, 384))
    batch = np.asarray(jax.jit(matvec.matmul)(x, q))
    for i in range(11):
        alone = np.asarray(jax.jit(matvec.matmul)(x[i : i + 1], q))
        np.testing.assert_array_equal(alone[0].view(np.uint32), batch[i].view(np.uint32))


@needs_kernel
def test_layers_use_the_kernel_for_few_rows_only():
    q, w = _weight(nf4, "out-in", 64, 96)
    bias = jnp.arange(96, dtype=jnp.float32)
    few, many = _rows((2, 8, 64)), _rows((17, 64))
    # Unmarked weights (training, a vmapped bank) keep the XLA product, whatever the rows.
    assert not _lowered(lambda x: layers.dense(x, q, bias=bias), few)
    q = matvec.stream(q)
    assert _lowered(lambda x: layers.dense(x, q, bias=bias), few)
    assert not _lowered(lambda x: layers.dense(x, q, bias=bias), many)
    _assert_close(layers.dense(few, q, bias=bias), np.asarray(few, np.float64) @ w + bias)
    # Dense weights, 8-bit weights and bfloat16 rows keep the XLA product.
    int8_w = qtree.quantize_tree({"kernel": np.asarray(w, np.float32)}, lambda p: True, "int8")
    assert not _lowered(lambda x: layers.dense(x, jnp.asarray(w, jnp.float32)), few)
    assert not _lowered(lambda x: layers.dense(x, int8_w["kernel"]), few)
    assert not _lowered(lambda x: layers.dense(x.astype(jnp.bfloat16), q), few)


@needs_kernel
def test_several_devices_keep_the_xla_product_unless_asked(monkeypatch):
    """With several devices (the suite's fake ones) a split weight would be gathered whole into
    the kernel: decoding leaves weights unmarked and `matmul` declines, unless PQM_NATIVE=1."""
    if jax.device_count() < 2:
        pytest.skip("needs several (fake) devices")
    q, _ = _weight(nf4, "out-in", 64, 96)
    monkeypatch.delenv("PQM_NATIVE", raising=False)
    assert not matvec.takes(q) and matvec.stream(q) is q
    assert matvec.matmul(_rows((2, 64)), q) is None
    monkeypatch.setenv("PQM_NATIVE", "1")
    assert matvec.takes(q) and isinstance(matvec.stream(q), matvec.Streamed)


@needs_kernel
def test_inputs_the_kernel_does_not_take_return_none():
    x = _rows((2, 384))
    odd_out, _ = _weight(nf4, "in-out", 384, 1000)  # in-out needs N % 32 == 0
    assert matvec.matmul(x, odd_out) is None
    odd_in, _ = _weight(nf4, "out-in", 48, 64)  # out-in needs K % 32 == 0
    assert matvec.matmul(_rows((2, 48)), odd_in) is None
    partial = nf4.quantize(np.ones((3, 64), np.float32), block_size=128)  # a partial block
    assert matvec.matmul(_rows((2, 3)), partial) is None
    assert matvec.matmul(x, jnp.ones((384, 64))) is None  # not quantised
    conv = nf4.quantize(np.ones((3, 384, 64), np.float32))  # not 2-D
    assert matvec.matmul(x, conv) is None and matvec.attend(x, conv) is None
    q, _ = _weight(nf4, "out-in", 384, 64)
    assert matvec.matmul(x.astype(jnp.bfloat16), q) is None
    assert not matvec.takes(odd_in) and matvec.takes(q) and not matvec.takes(jnp.ones((4, 4)))
    # layers fall back to the dequantised product for them.
    np.testing.assert_allclose(
        layers.dense(x, odd_out), x @ odd_out.dequantize(), rtol=1e-6, atol=1e-5
    )


@needs_kernel
@pytest.mark.parametrize("layout", ["in-out", "out-in"])
def test_vmap_over_rows_and_over_weights(layout):
    q, w = _weight(nf4, layout, 128, 64)
    xs = _rows((3, 4, 128))
    ours = jax.jit(jax.vmap(matvec.matmul, (0, None)))(xs, q)
    _assert_close(ours, np.asarray(xs, np.float64) @ w)
    pairs = [_weight(fp4, layout, 128, 64, seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[p[0] for p in pairs])
    ours = jax.jit(jax.vmap(matvec.matmul))(xs, stacked)
    for i, (_, wi) in enumerate(pairs):
        _assert_close(ours[i], np.asarray(xs[i], np.float64) @ wi)


@needs_kernel
@pytest.mark.parametrize("layout", ["in-out", "out-in"])
def test_gradient_in_rows_is_the_kernel_in_the_other_layout(layout):
    """Reverse mode through `matmul` / `attend` multiplies the cotangent by W.T with the kernel
    (two kernel calls, no dense decode in the compiled program, as a training step with a
    frozen base runs it), under vmap, close to the exact float64 gradient."""
    q, w = _weight(nf4, layout, 256, 128, double_quant=True)
    q = matvec.with_float_absmax(q)
    xs = _rows((2, 24, 256))
    cot = np.random.default_rng(7).standard_normal((2, 24, 128))

    def loss(x, q):  # non-linear, so that the gradient needs the forward product too
        return jnp.sum(jnp.tanh(matvec.matmul(x, q)) * jnp.asarray(cot, jnp.float32)[0])

    grad = jax.jit(jax.vmap(jax.grad(loss), (0, None)))
    text = grad.lower(xs, q).compile().as_text()
    assert text.count(matvec.TARGET) == 2 and native.TARGET not in text
    x64 = np.asarray(xs, np.float64)
    # Two float32 products and tanh' in a chain: a looser bound than one product's.
    _assert_close(grad(xs, q), (cot[0] * (1 - np.tanh(x64 @ w) ** 2)) @ w.T, tol=1e-5)
    table, t = _weight(fp4, "in-out", 512, 64)  # a [vocab, d] table: logits x @ table.T
    c = np.random.default_rng(8).standard_normal((24, 512))

    def logits_loss(x):
        return jnp.sum(jnp.tanh(matvec.attend(x, table)) * jnp.asarray(c, jnp.float32))

    text = jax.jit(jax.grad(logits_loss)).lower(xs[0, :, :64]).compile().as_text()
    assert text.count(matvec.TARGET) == 2 and native.TARGET not in text
    x64 = np.asarray(xs[0, :, :64], np.float64)
    exact = (c * (1 - np.tanh(x64 @ t.T) ** 2)) @ t
    _assert_close(jax.jit(jax.grad(logits_loss))(xs[0, :, :64]), exact, tol=1e-5)


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
def test_grad_in_rows_adapter_and_absmax_matches_xla(double_quant):
    """Gradients through the kernel's custom VJP equal those of the XLA path: in the rows, in a
    LoRA adapter, and in the weight's float absmax. Forward mode is not defined (reverse only)."""
    q, _ = _weight(nf4, "out-in", 64, 96, double_quant=double_quant)
    x = _rows((3, 64))
    ad = lora_lib.LoraWeights(a=_rows((64, 4), seed=2) * 0.1, b=_rows((4, 96), seed=3), scale=0.5)

    def loss(x, ad, q):
        return jnp.sum(jnp.tanh(layers.dense(x, q, ad)))

    grad = jax.grad(loss, argnums=(0, 1, 2), allow_int=True)
    ours = jax.jit(grad)(x, ad, matvec.Streamed(inner=q))
    assert _lowered(grad, x, ad, matvec.Streamed(inner=q))
    with mock.patch.object(matvec, "available", lambda: False):
        ref = jax.jit(grad)(x, ad, q)
    # The forward products differ in summation order (the kernel's against XLA's), and tanh'
    # carries that into the gradients: close relative to their norm, not element by element.
    _assert_close(ours[0], np.asarray(ref[0], np.float64), tol=1e-4)
    _assert_close(ours[1].b, np.asarray(ref[1].b, np.float64), tol=1e-4)
    field = "absmax_scale" if double_quant else "absmax"
    ours_w, ref_w = getattr(ours[2].inner.inner, field), getattr(ref[2].inner, field)
    np.testing.assert_allclose(ours_w, ref_w, rtol=1e-4, atol=1e-6)
    assert np.any(np.asarray(ours_w) != 0)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: matvec.matmul(x, q), (x,), (x,))


@needs_kernel
def test_float_absmax_keeps_the_product():
    q, _ = _weight(nf4, "out-in", 128, 64, double_quant=True)
    resolved = matvec.with_float_absmax(q)
    assert not resolved.inner.double_quant and resolved.inner.absmax.dtype == jnp.float32
    np.testing.assert_array_equal(resolved.dequantize(), q.dequantize())
    x = _rows((2, 128))
    np.testing.assert_array_equal(matvec.matmul(x, resolved), matvec.matmul(x, q))


@needs_kernel
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="-mno-avx512f is an x86 flag")
def test_portable_scalar_kernel_is_close(portable_kernel):
    """The same source built without AVX-512 (the loops any CPU runs) is as close, both layouts."""
    name = portable_kernel(matvec.SOURCE, "PqmFourBitMatVec")
    for layout, code in (("in-out", matvec.IN_OUT), ("out-in", matvec.OUT_IN)):
        for rows, k, n, threads in ((1, 64, 96, 1), (9, 96, 64, 3), (4, 128, 224, 0)):
            q, w = _weight(fp4, layout, k, n, block=32)
            inner = q if layout == "in-out" else q.inner
            x = _rows((rows, k))
            out = jax.ShapeDtypeStruct((rows, n), jnp.float32)
            ours = jax.ffi.ffi_call(name, out)(
                x,
                inner.codes,
                inner.absmax,
                jnp.asarray(fp4.TABLE),
                block=np.int64(32),
                layout=np.int64(code),
                threads=np.int64(threads),
            )
            _assert_close(ours, np.asarray(x, np.float64) @ w)


@needs_kernel
def test_kernel_rejects_mismatched_shapes():
    call = jax.ffi.ffi_call(matvec.TARGET, jax.ShapeDtypeStruct((2, 64), jnp.float32))
    with pytest.raises(Exception, match="shapes do not match"):
        call(
            jnp.ones((2, 64), jnp.float32),
            jnp.zeros((1024,), jnp.uint8),  # 2048 weights, not 64 x 64
            jnp.ones((32,), jnp.float32),
            jnp.asarray(nf4.TABLE),
            block=np.int64(64),
            layout=np.int64(matvec.OUT_IN),
            threads=np.int64(0),
        ).block_until_ready()


_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from pqm_jax import layers
    from pqm_jax.quant import nf4
    from pqm_jax.quant.native import matvec
    rng = np.random.default_rng(0)
    q = nf4.quantize(rng.standard_normal((256, 128)).astype(np.float32))
    x = jnp.asarray(rng.standard_normal((4, 256)), jnp.float32)
    f = jax.jit(layers.dense)
    ref = jax.jit(lambda x, q: x @ q.dequantize())(x, q)
    q = matvec.Streamed(inner=q)
    same = bool(np.array_equal(np.asarray(f(x, q)), np.asarray(ref)))
    lowered = matvec.TARGET in f.lower(x, q).as_text()
    print(json.dumps({"available": matvec.available(), "same": same, "lowered": lowered}))
    """
)


def test_switched_off_in_a_fresh_process(tmp_path):
    """With PQM_NATIVE=0 a process multiplies by the dequantised weight: the XLA result."""
    env = {**os.environ, "PQM_CACHE_DIR": str(tmp_path / "cache"), "PQM_NATIVE": "0"}
    env.pop("XLA_FLAGS", None)  # one device is enough, and starts faster
    res = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    status = json.loads(res.stdout.strip().splitlines()[-1])
    assert status == {"available": False, "same": True, "lowered": False}
