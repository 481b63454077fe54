"""Every registered scheme, one parametrised suite: error bounds, jit, vmap, eval_shape, pytrees,
sharding, and loud failure on misuse."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pqm_jax import quant
from pqm_jax.quant import base

SCHEMES = quant.registered_schemes()
SHAPES = [(1,), (7,), (65,), (3, 33), (2, 5, 13), (130,)]


def test_builtin_schemes_are_registered():
    assert {"nf4", "fp4", "int8"} <= set(SCHEMES)


def _block_absmax(x: np.ndarray, block: int) -> np.ndarray:
    flat = x.reshape(-1)
    nb = -(-flat.size // block)
    padded = np.pad(np.abs(flat), (0, nb * block - flat.size))
    return np.repeat(padded.reshape(nb, block).max(1), block)[: flat.size]


@pytest.mark.parametrize("scheme", SCHEMES)
@settings(max_examples=30, deadline=None)
@given(
    # a few shapes (odd lengths, partial blocks, 1-3 dims) so the jit cache is reused across examples
    x=st.sampled_from(SHAPES).flatmap(
        lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32))
    ),
    block=st.sampled_from([32, 64, 4096]),
)
def test_round_trip_error_bound(scheme, x, block):
    s = base.get_scheme(scheme)
    q = quant.quantize(x, scheme, block_size=block)
    y = np.asarray(q.dequantize(jnp.float32))
    assert y.shape == x.shape
    bound = s.max_error * _block_absmax(x, block) * (1 + 1e-5) + 1e-30
    assert np.all(np.abs(y.reshape(-1) - x.reshape(-1)) <= bound)


@pytest.mark.parametrize("scheme", ["nf4", "fp4"])
@settings(max_examples=20, deadline=None)
@given(
    x=st.sampled_from([(1,), (129,), (2999,)]).flatmap(
        lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-100, 100, width=32))
    ),
)
def test_double_quant_error_bound(scheme, x):
    """Double quantisation adds the 8-bit absmax error: still within 2x the 4-bit bound + 1%."""
    s = base.get_scheme(scheme)
    q = quant.quantize(x, scheme, block_size=64, double_quant=True)
    y = np.asarray(q.dequantize())
    absmax = _block_absmax(x, 64)
    bound = (s.max_error * 1.02 + 0.01) * absmax + 0.01 * np.abs(x).max() + 1e-30
    assert np.all(np.abs(y - x) <= bound)


def _sample(shape=(48, 40), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_jit_vmap_eval_shape_and_pytree(scheme):
    x = _sample()
    q = quant.quantize(x, scheme)
    ref = np.asarray(q.dequantize())

    # jit: the quantised tensor is an argument like any pytree
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda t: t.dequantize())(q)), ref)

    # pytree round trip: arrays are children, shape/block size static
    leaves, treedef = jax.tree.flatten(q)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    q2 = jax.tree.unflatten(treedef, leaves)
    assert type(q2) is type(q) and q2.shape == q.shape
    np.testing.assert_array_equal(np.asarray(q2.dequantize()), ref)

    # vmap over a stack of quantised tensors (leading axis on every child)
    xs = np.stack([_sample(seed=i) for i in range(3)])
    qs = jax.tree.map(lambda *a: jnp.stack(a), *[quant.quantize(xi, scheme) for xi in xs])
    ys = jax.vmap(lambda t: t.dequantize())(qs)
    for i in range(3):
        np.testing.assert_array_equal(
            np.asarray(ys[i]), np.asarray(quant.quantize(xs[i], scheme).dequantize())
        )

    # eval_shape: abstract quantise and dequantise
    abstract = jax.eval_shape(
        lambda a: quant.quantize(a, scheme), jax.ShapeDtypeStruct(x.shape, x.dtype)
    )
    assert type(abstract) is type(q)
    out = jax.eval_shape(lambda t: t.dequantize(jnp.bfloat16), q)
    assert out.shape == x.shape and out.dtype == jnp.bfloat16

    # quantising under jit gives the same codes as eagerly
    qj = jax.jit(lambda a: quant.quantize(a, scheme))(x)
    for a, b in zip(jax.tree.leaves(qj), jax.tree.leaves(q)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sharded_dequantize(scheme):
    """Children sharded block-aligned over fake CPU devices dequantise to the same values."""
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip(
            "needs several (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count"
        )
    n = 4 if len(devices) >= 4 else 2
    mesh = jax.sharding.Mesh(np.array(devices[:n]), ("model",))
    x = _sample((64, 64 * n))
    q = quant.quantize(x, scheme)
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model"))
    qs = jax.tree.map(lambda a: jax.device_put(a, spec) if a.ndim else a, q)
    assert any(len(leaf.sharding.device_set) == n for leaf in jax.tree.leaves(qs))
    y = jax.jit(lambda t: t.dequantize())(qs)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(q.dequantize()))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(scheme, bad):
    x = _sample((4, 64))
    x[2, 3] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        quant.quantize(x, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bad_block_size_and_empty_raise(scheme):
    with pytest.raises(ValueError, match="block_size"):
        quant.quantize(_sample(), scheme, block_size=48)
    with pytest.raises(ValueError, match="empty"):
        quant.quantize(np.zeros((0, 4), np.float32), scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_blocks_dequantise_to_zero(scheme):
    x = np.zeros((3, 64), np.float32)
    x[1] = np.linspace(-2, 2, 64)
    y = np.asarray(quant.quantize(x, scheme).dequantize())
    assert np.all(y[0] == 0) and np.all(y[2] == 0) and np.all(np.isfinite(y))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantised_tensor_refuses_silent_densification(scheme):
    q = quant.quantize(_sample(), scheme)
    with pytest.raises(TypeError, match="dequantize"):
        np.asarray(q)
    with pytest.raises(TypeError, match="dequantize"):
        jnp.asarray(q)


def test_unknown_scheme_names_the_registered_ones():
    with pytest.raises(KeyError, match="nf4"):
        quant.quantize(_sample(), "nf3")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_storage_matches_nominal_bits(scheme):
    x = _sample((256, 256))
    q = quant.quantize(x, scheme)
    bits = 8 * q.nbytes / math.prod(x.shape)
    assert bits == pytest.approx(base.get_scheme(scheme).bits_per_weight, rel=0.01)


def test_double_quant_is_about_4_127_bits():
    q = quant.quantize(_sample((1024, 1024)), "nf4", double_quant=True)
    assert 8 * q.nbytes / 1024**2 == pytest.approx(4.127, abs=0.002)


def test_new_scheme_is_one_registration():
    """A scheme defined here (sign + absmax, 1 bit) plugs into quantize/dequantize/dense."""
    from flax import struct

    from pqm_jax import layers

    @struct.dataclass
    class SignTensor(base.QuantizedTensor):
        signs: jax.Array
        scale: jax.Array
        shape: tuple = struct.field(pytree_node=False)

        def dequantize(self, dtype=jnp.float32):
            return (jnp.where(self.signs, 1.0, -1.0) * self.scale).astype(dtype)

    def quantize(x):
        x = jnp.asarray(x)
        return SignTensor(signs=x >= 0, scale=jnp.abs(x).mean(), shape=x.shape)

    base.register(base.Scheme("sign-test", quantize, SignTensor, max_error=10.0))
    try:
        w = quant.quantize(_sample((8, 4)), "sign-test")
        y = layers.dense(jnp.ones((2, 8)), w)
        assert y.shape == (2, 4)
        assert "sign-test" in quant.registered_schemes()
    finally:
        base._SCHEMES.pop("sign-test")


def test_schemes_of_equal_shape_have_different_tree_definitions():
    """Two schemes' tensors of one shape must not share a pytree definition: jit keys its cache
    on it, and a program traced for one scheme bakes in that scheme's code table. (JAX 0.10
    compares dataclass nodes of different types as equal when their static data are equal.)"""
    x = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    tensors = {name: base.quantize(x, name) for name in SCHEMES}
    defs = {name: jax.tree.structure(t) for name, t in tensors.items()}
    for a in defs:
        for b in defs:
            assert (defs[a] == defs[b]) == (a == b), (a, b)
    # The same jitted function, NF4 then FP4 of one shape: each decodes with its own table.
    f = jax.jit(lambda t: t.dequantize())
    for name in ("nf4", "fp4"):
        want = np.asarray(tensors[name].dequantize())
        np.testing.assert_array_equal(np.asarray(f(tensors[name])), want)
