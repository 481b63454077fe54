"""The 4-bit decoding paths agree bit for bit: the whole tensor and embedding rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import layers
from pqm_jax.quant import fp4, nf4


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("mod", [nf4, fp4])
def test_rows_equal_rows_of_the_whole_table(mod, double_quant):
    x = np.random.default_rng(0).standard_normal((300, 128)).astype(np.float32)
    q = mod.quantize(x, block_size=64, double_quant=double_quant)
    ids = jnp.asarray([[0, 299, 7], [7, 150, 1]])
    whole = np.asarray(q.dequantize())[np.asarray(ids)]
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda q, i: q.rows(i))(q, ids)), whole)
    np.testing.assert_array_equal(np.asarray(layers.embed(ids, q)), whole)


def test_rows_of_a_row_that_spans_partial_blocks_fall_back():
    x = np.random.default_rng(1).standard_normal((10, 48)).astype(np.float32)  # 48 % 64 != 0
    q = nf4.quantize(x, block_size=64)
    ids = jnp.asarray([3, 9])
    np.testing.assert_array_equal(np.asarray(q.rows(ids)), np.asarray(q.dequantize())[[3, 9]])


def test_double_quant_absmax_decodes_to_the_same_bits_jitted_and_eager():
    """The absmax is rounded twice (product, then sum) in every program: XLA had contracted it
    into one fused multiply-add under jit and not eagerly, a last-bit difference."""
    x = np.random.default_rng(3).standard_normal((64, 4096)).astype(np.float32)
    q = nf4.quantize(x, block_size=4096, double_quant=True)
    eager = np.asarray(q.dequantize()).view(np.uint32)
    jitted = np.asarray(jax.jit(lambda q: q.dequantize())(q)).view(np.uint32)
    np.testing.assert_array_equal(jitted, eager)
