"""The Conformer's convolutions, written as products, against XLA's own convolutions.

`blocks.depthwise_conv` (K shifted products summed in float32) and `blocks.conv2d` (products over
the kernel's taps) replace `lax.conv_general_dilated`, which XLA's CPU backend runs 1.2-14x
slower for these shapes; the convolution op is the independent reference here (the ESPnet/torch
tests in this folder check the whole model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.models.conformer import blocks


def _reference_depthwise(x, kernel, bias):
    width = kernel.shape[0]
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,),
        padding=[((width - 1) // 2, (width - 1) // 2)],
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=x.shape[-1],
        precision=jax.lax.Precision.HIGHEST,
    )
    return y + bias


def _reference_conv2d(x, kernel, bias, stride):
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return y + bias


@pytest.mark.parametrize("width", [15, 3, 1])
def test_depthwise_conv_equals_the_grouped_convolution(width):
    rng = np.random.default_rng(width)
    x = jnp.asarray(rng.standard_normal((3, 21, 8)), jnp.float32)
    p = {
        "kernel": jnp.asarray(rng.standard_normal((width, 1, 8)), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(8), jnp.float32),
    }
    want = _reference_depthwise(x, p["kernel"], p["bias"])
    got = blocks.depthwise_conv(p, x)
    assert got.shape == want.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the input gradient too (the adaptation step's backward pass)
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    ours = jax.vjp(lambda v: blocks.depthwise_conv(p, v), x)[1](g)[0]
    ref = jax.vjp(lambda v: _reference_depthwise(v, p["kernel"], p["bias"]), x)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_depthwise_conv_sums_bfloat16_in_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 30, 16)), jnp.float32)
    p = {"kernel": jnp.asarray(rng.standard_normal((15, 1, 16)), jnp.float32)}
    got = blocks.depthwise_conv(p, x.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    # the reference on the same bfloat16-rounded inputs with the float32 kernel, in float32:
    # only the output's one rounding to bfloat16 (2^-9 relative) apart
    want = _reference_depthwise(x.astype(jnp.bfloat16).astype(jnp.float32), p["kernel"], 0.0)
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "cin", "stride"),
    [((2, 19, 13), 1, 2), ((2, 11, 9), 16, 2), ((1, 8, 7), 16, 1), ((1, 10, 10), 3, 3)],
)
def test_conv2d_equals_the_convolution(shape, cin, stride):
    rng = np.random.default_rng(cin * 10 + stride)
    x = jnp.asarray(rng.standard_normal((*shape, cin)), jnp.float32)
    p = {
        "kernel": jnp.asarray(rng.standard_normal((3, 3, cin, 12)) * 0.3, jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(12), jnp.float32),
    }
    want = _reference_conv2d(x, p["kernel"], p["bias"], stride)
    got = blocks.conv2d(p, x, stride=stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    ours = jax.vjp(
        lambda v, k: blocks.conv2d({"kernel": k, "bias": p["bias"]}, v, stride=stride),
        x,
        p["kernel"],
    )[1](g)
    ref = jax.vjp(lambda v, k: _reference_conv2d(v, k, p["bias"], stride), x, p["kernel"])[1](g)
    for a, b in zip(ours, ref, strict=True):  # input and kernel gradients (pretraining)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
