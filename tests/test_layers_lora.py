"""The projection primitive and LoRA: invariants, gradients, banks under vmap."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import layers, quant
from pqm_jax import lora as lora_lib
from pqm_jax.quant import tree as qtree

D_IN, D_OUT = 64, 48


def _params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.1)
    return {
        "enc": {
            "self_attn": {"q_proj": {"kernel": f(D_IN, D_OUT), "bias": f(D_OUT)}},
            "fc1": {"kernel": f(D_IN, D_OUT), "bias": f(D_OUT)},
        }
    }


CFG = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=(r"self_attn/q_proj$",))


def _forward(params, lora, x, rng=None):
    p = params["enc"]["self_attn"]["q_proj"]
    ad = lora_lib.sub(lora, "enc", "self_attn", "q_proj")
    return layers.dense(x, p["kernel"], ad, bias=p["bias"], rng=rng)


def _x(n=5):
    return jnp.asarray(np.random.default_rng(1).standard_normal((n, D_IN)).astype(np.float32))


def test_init_shapes_scale_and_targets():
    lora = lora_lib.init(_params(), CFG, key=jax.random.key(0))
    ad = lora["enc"]["self_attn"]["q_proj"]
    assert ad.a.shape == (D_IN, 4) and ad.b.shape == (4, D_OUT)
    assert ad.scale == 2.0
    assert np.all(np.asarray(ad.b) == 0)
    assert np.abs(np.asarray(ad.a)).max() <= 1 / np.sqrt(D_IN)
    assert "fc1" not in lora["enc"]
    rs = lora_lib.LoraConfig(rank=4, alpha=8.0, rslora=True, targets=CFG.targets)
    assert rs.scale == pytest.approx(4.0)


def test_init_rejects_targets_that_match_nothing():
    with pytest.raises(ValueError, match="no module"):
        lora_lib.init(_params(), lora_lib.LoraConfig(targets=("nope",)), key=jax.random.key(0))


@pytest.mark.parametrize("scheme", [None, *quant.registered_schemes()])
def test_zero_b_gives_exactly_the_base_output(scheme):
    params = _params()
    if scheme:
        params = qtree.quantize_tree(params, qtree.match_any([r"kernel$"]), scheme)
    lora = lora_lib.init(params, CFG, key=jax.random.key(0))
    x = _x()
    np.testing.assert_array_equal(
        np.asarray(_forward(params, lora, x)), np.asarray(_forward(params, None, x))
    )


@pytest.mark.parametrize("scheme", [None, "nf4"])
def test_merged_equals_unmerged(scheme):
    params = _params()
    if scheme:
        params = qtree.quantize_tree(params, qtree.match_any([r"kernel$"]), scheme)
    lora = lora_lib.init(params, CFG, key=jax.random.key(0))
    lora = jax.tree.map(lambda a: a + 0.05, lora)  # B != 0
    x = _x()
    merged = lora_lib.merge(params, lora)
    assert not quant.is_quantized(merged["enc"]["self_attn"]["q_proj"]["kernel"])
    np.testing.assert_allclose(
        np.asarray(_forward(params, lora, x)), np.asarray(_forward(merged, None, x)), atol=1e-5
    )


def test_gradients_flow_to_lora_only_and_base_is_untouched():
    params = qtree.quantize_tree(_params(), qtree.match_any([r"kernel$"]), "nf4")
    before = jax.tree.map(np.asarray, params)
    lora = lora_lib.init(params, CFG, key=jax.random.key(0))
    x = _x()

    def loss(lora, params):
        return jnp.sum(_forward(params, lora, x) ** 2)

    g = jax.grad(loss)(lora, params)
    ga = g["enc"]["self_attn"]["q_proj"]
    assert np.abs(np.asarray(ga.b)).sum() > 0  # B gets gradient first (A is random, B zero)
    assert jax.tree.structure(g) == jax.tree.structure(lora)
    after = jax.tree.map(np.asarray, params)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)


def test_branch_gradients_equal_autodiff_of_the_plain_formula():
    """The hand-written backward of the low-rank product against jax.grad of scale*(x@a)@b.

    Checked as each speaker's step runs it: rows [batch, time, in] and a bank under vmap.
    """
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((3, 2, 7, D_IN)), jnp.float32)
    a = jnp.asarray(rng.standard_normal((3, D_IN, 4)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((3, 4, D_OUT)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 7, D_OUT)), jnp.float32)

    def ours(x, a, b):
        out = lora_lib.branch(x, lora_lib.LoraWeights(a=a, b=b, scale=1.5))
        return jnp.sum(jnp.sin(out) * w[0])

    def plain(x, a, b):
        out = ((x @ a) @ b) * 1.5
        return jnp.sum(jnp.sin(out) * w[0])

    got = jax.vmap(jax.grad(ours, argnums=(0, 1, 2)))(x, a, b)
    want = jax.vmap(jax.grad(plain, argnums=(0, 1, 2)))(x, a, b)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape
        scale = float(np.abs(np.asarray(r)).max())  # float32 sums of different order
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5 * scale)


def test_dropout_only_with_rng():
    params = _params()
    cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=CFG.targets, dropout=0.5)
    lora = jax.tree.map(lambda a: a + 0.1, lora_lib.init(params, cfg, key=jax.random.key(0)))
    x = _x()
    no_rng = _forward(params, lora, x)
    np.testing.assert_array_equal(np.asarray(no_rng), np.asarray(_forward(params, lora, x)))
    with_rng = _forward(params, lora, x, rng=jax.random.key(3))
    assert not np.allclose(np.asarray(no_rng), np.asarray(with_rng))


def _bank(params, n):
    keys = jax.random.split(jax.random.key(0), n)
    ads = [
        jax.tree.map(lambda a, i=i: a + 0.01 * (i + 1), lora_lib.init(params, CFG, key=k))
        for i, k in enumerate(keys)
    ]
    return ads, lora_lib.stack(ads)


def test_stacked_bank_under_vmap_equals_each_adapter_alone():
    params = qtree.quantize_tree(_params(), qtree.match_any([r"kernel$"]), "nf4")
    ads, bank = _bank(params, 3)
    x = _x()
    ys = jax.vmap(lambda ad: _forward(params, ad, x))(bank)
    for i, ad in enumerate(ads):
        np.testing.assert_allclose(
            np.asarray(ys[i]), np.asarray(_forward(params, ad, x)), atol=1e-6
        )


def test_per_example_adapters_gathered_from_a_bank():
    params = _params()
    ads, bank = _bank(params, 3)
    x = _x(6)
    speakers = jnp.array([2, 0, 1, 1, 0, 2])
    y = _forward(params, lora_lib.take(bank, speakers), x[:, None, :])[:, 0]
    for row, s in enumerate(np.asarray(speakers)):
        ref = _forward(params, ads[s], x[row : row + 1])
        np.testing.assert_allclose(np.asarray(y[row : row + 1]), np.asarray(ref), atol=1e-6)


def test_dense_rejects_unknown_weight_types():
    with pytest.raises(TypeError, match="unsupported weight type"):
        layers.dense(_x(), [[1.0] * D_OUT] * D_IN)
    with pytest.raises(TypeError, match="unsupported weight type"):
        layers.dense(_x(), {"kernel": 1})


def test_dense_never_forms_w_plus_ba():
    """The jaxpr of an adapted dense holds no [in, out] add: only x@W and (x@A)@B."""
    params = _params()
    lora = lora_lib.init(params, CFG, key=jax.random.key(0))
    jaxpr = jax.make_jaxpr(lambda x: _forward(params, lora, x))(_x())
    adds = [e for e in jaxpr.eqns if e.primitive.name == "add"]
    assert adds and all(tuple(e.outvars[0].aval.shape) != (D_IN, D_OUT) for e in adds)


def test_bf16_compute():
    params = qtree.quantize_tree(_params(), qtree.match_any([r"kernel$"]), "nf4")
    y = _forward(params, None, _x().astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    ref = _forward(params, None, _x())
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=0.05)


def test_bfloat16_products_accumulate_in_float32_forward_and_backward():
    """bfloat16 x bfloat16 products (forward, input and weight gradients) are emitted as dots
    with a float32 result, the form matrix units run, and stay within bfloat16 rounding of the
    float64 product; float32 products are left as they were."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 40, 256)).astype(np.float32)
    w = (rng.standard_normal((256, 96)) / 16).astype(np.float32)
    g = rng.standard_normal((3, 40, 96)).astype(np.float32)
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)

    def loss(x, w):
        return jnp.sum(layers.matmul(x, w).astype(jnp.float32) * g)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    hlo = grad.lower(xb, wb).as_text()
    mixed = re.findall(r"dot_general.*\(tensor<\S*bf16>, tensor<\S*bf16>\) -> tensor<\S*f32>", hlo)
    assert len(mixed) >= 3, "forward, input- and weight-gradient products accumulate in float32"
    y = np.asarray(jax.jit(layers.matmul)(xb, wb), np.float64)
    x64, w64 = np.asarray(xb, np.float64), np.asarray(wb, np.float64)
    np.testing.assert_allclose(y, x64 @ w64, rtol=2**-7, atol=1e-2)
    dx, dw = (np.asarray(a, np.float64) for a in grad(xb, wb)[1])
    g64 = np.asarray(jnp.asarray(g, jnp.bfloat16), np.float64)
    np.testing.assert_allclose(dx, g64 @ w64.T, rtol=2**-7, atol=1e-2)
    dw_ref = x64.reshape(-1, 256).T @ g64.reshape(-1, 96)
    np.testing.assert_allclose(dw, dw_ref, rtol=2**-7, atol=0.1)
    # float32 keeps plain products
    f32 = jax.jit(layers.matmul).lower(jnp.asarray(x), jnp.asarray(w)).as_text()
    assert "preferred_element_type" not in f32 and "bf16" not in f32


def test_wide_bfloat16_product_is_the_float32_sum_unrounded_with_the_same_gradients():
    """`matmul(wide=True)` (the logits): bfloat16 operands give their float32 sums, not rounded
    to bfloat16; its gradients are those of the rounded product."""
    rng = np.random.default_rng(1)
    xb = jnp.asarray(rng.standard_normal((2, 24, 64)), jnp.bfloat16)
    wb = jnp.asarray(rng.standard_normal((64, 40)) / 8, jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((2, 24, 40)), jnp.float32)
    wide = jax.jit(lambda x, w: layers.matmul(x, w, wide=True))(xb, wb)
    assert wide.dtype == jnp.float32
    exact = np.asarray(xb, np.float64) @ np.asarray(wb, np.float64)
    np.testing.assert_allclose(np.asarray(wide, np.float64), exact, rtol=1e-5, atol=1e-5)
    rounded = layers.matmul(xb, wb)
    assert rounded.dtype == jnp.bfloat16 and not np.array_equal(
        np.asarray(rounded, np.float32), wide
    )

    def grads(**kw):
        loss = lambda x, w: jnp.sum(layers.matmul(x, w, **kw).astype(jnp.float32) * g)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(xb, wb)

    for a, b in zip(grads(wide=True), grads(), strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_conv1d_and_embed_accept_quantised_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8, 16)).astype(np.float32)
    x = jnp.asarray(rng.standard_normal((2, 20, 8)).astype(np.float32))
    qw = quant.quantize(w, "nf4")
    y = layers.conv1d(x, qw, stride=2, padding=1)
    ref = layers.conv1d(x, qw.dequantize(), stride=2, padding=1)
    assert y.shape == (2, 10, 16)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-6)
    table = quant.quantize(rng.standard_normal((50, 8)).astype(np.float32), "nf4")
    e = layers.embed(jnp.array([[1, 4]]), table)
    np.testing.assert_array_equal(np.asarray(e[0, 1]), np.asarray(table.dequantize()[4]))
    logits = layers.attend(e, table)
    assert logits.shape == (1, 2, 50)
