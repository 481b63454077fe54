"""Quantising a params pytree by path predicate, and measuring it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import quant
from pqm_jax.quant import tree as qtree


def _params():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return {
        "decoder": {
            "embed_tokens": f(100, 64),
            "layers_0": {
                "self_attn": {"q_proj": {"kernel": f(64, 64), "bias": f(64)}},
                "fc1": {"kernel": f(64, 256), "bias": f(256)},
                "self_attn_layer_norm": {"scale": f(64), "bias": f(64)},
            },
        }
    }


PRED = qtree.match_any([r"_proj/kernel$", r"fc\d/kernel$", r"embed_tokens$"])


def test_predicate_selects_kernels_and_embedding_only():
    q = qtree.quantize_tree(_params(), PRED, "nf4")
    layer = q["decoder"]["layers_0"]
    assert quant.is_quantized(layer["self_attn"]["q_proj"]["kernel"])
    assert quant.is_quantized(layer["fc1"]["kernel"])
    assert quant.is_quantized(q["decoder"]["embed_tokens"])
    assert not quant.is_quantized(layer["fc1"]["bias"])
    assert not quant.is_quantized(layer["self_attn_layer_norm"]["scale"])


def test_torch_layout_blocks_run_along_the_input_dim():
    """Quantising a Flax [in, out] kernel in torch layout equals quantising W.T = torch weight."""
    p = _params()
    k = p["decoder"]["layers_0"]["fc1"]["kernel"]
    q = qtree.quantize_tree(p, PRED, "nf4")["decoder"]["layers_0"]["fc1"]["kernel"]
    direct = quant.quantize(k.T, "nf4")
    np.testing.assert_array_equal(np.asarray(q.inner.codes), np.asarray(direct.codes))
    assert q.shape == k.shape
    np.testing.assert_array_equal(np.asarray(q.dequantize()), np.asarray(direct.dequantize()).T)


def test_dequantize_tree_and_sizes():
    p = _params()
    q = qtree.quantize_tree(p, PRED, "nf4", double_quant=True)
    dense = qtree.dequantize_tree(q)
    assert jnp.asarray(dense["decoder"]["embed_tokens"]).shape == (100, 64)
    assert qtree.tree_num_params(q) == qtree.tree_num_params(p)
    full = qtree.tree_nbytes(p)
    small = qtree.tree_nbytes(q)
    quantised = 100 * 64 + 64 * 64 + 64 * 256
    expected = (full - 4 * quantised) + quantised * 4.127 / 8
    assert small == pytest.approx(expected, rel=0.02)
    assert full / small > 5


def test_min_size_keeps_small_arrays_dense():
    q = qtree.quantize_tree(_params(), PRED, "int8", min_size=5000)
    assert not quant.is_quantized(q["decoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"])
    assert quant.is_quantized(q["decoder"]["embed_tokens"])


def test_already_quantised_leaves_are_left_alone():
    q = qtree.quantize_tree(_params(), PRED, "nf4")
    q2 = qtree.quantize_tree(q, PRED, "int8")
    assert type(q2["decoder"]["embed_tokens"]) is type(q["decoder"]["embed_tokens"])
