"""Conformer AED invariants: shapes, padding, NF4 weights, LoRA, jit/grad, bfloat16."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import lora as lora_lib
from pqm_jax.models.conformer import ctc
from pqm_jax.models.conformer import model as conformer
from pqm_jax.quant import tree as qtree

CONFIG = conformer.ConformerConfig(
    vocab_size=19,
    n_mels=16,
    d_model=32,
    encoder_layers=2,
    encoder_heads=4,
    encoder_ffn=48,
    kernel_size=7,
    decoder_layers=1,
    decoder_heads=4,
    decoder_ffn=40,
)


@functools.cache
def _params() -> dict:
    p = conformer.init(CONFIG, key=jax.random.key(0))
    # Non-trivial BatchNorm statistics, so that the frozen-stats path is exercised.
    for i in range(CONFIG.encoder_layers):
        nm = p["encoder"][f"encoders_{i}"]["conv_module"]["norm"]
        nm["mean"] = 0.1 * jax.random.normal(jax.random.key(i), nm["mean"].shape)
        nm["var"] = 1.0 + jax.random.uniform(jax.random.key(i + 10), nm["var"].shape)
    return p


def _feats(b: int, t: int, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (b, t, CONFIG.n_mels))


_encode = jax.jit(functools.partial(conformer.encode, config=CONFIG))
_loss = jax.jit(functools.partial(conformer.loss, config=CONFIG))


def test_shapes_and_lengths():
    enc, lens = _encode(_params(), _feats(3, 50), jnp.array([50, 31, 7]))
    assert enc.shape == (3, 11, CONFIG.d_model)  # ((50 - 1)//2 - 1)//2
    np.testing.assert_array_equal(lens, [11, 7, 1])
    tokens = jnp.ones((3, 5), jnp.int32)
    logits = conformer.decode(_params(), tokens, enc, ctc.length_mask(lens, 11), config=CONFIG)
    assert logits.shape == (3, 5, CONFIG.vocab_size) and logits.dtype == jnp.float32
    assert ctc.logits(_params(), enc).shape == (3, 11, CONFIG.vocab_size)


def test_rejects_wrong_feature_size():
    with pytest.raises(ValueError, match="feats"):
        conformer.encode(_params(), jnp.zeros((1, 20, 80)), jnp.array([20]), config=CONFIG)
    with pytest.raises(ValueError, match="conv_norm"):
        conformer.ConformerConfig(vocab_size=5, conv_norm="group_norm")


def test_padding_does_not_change_valid_frames():
    """An utterance alone equals the same utterance padded with garbage in a batch."""
    alone = _feats(1, 37, seed=3)
    garbage = 100.0 * _feats(1, 60, seed=4)
    padded = jnp.concatenate([alone, garbage[:, 37:]], axis=1)
    batch = jnp.concatenate([padded, _feats(1, 60, seed=5)], axis=0)
    enc1, len1 = _encode(_params(), alone, jnp.array([37]))
    enc2, len2 = _encode(_params(), batch, jnp.array([37, 60]))
    n = int(len1[0])
    assert int(len2[0]) == n
    np.testing.assert_allclose(enc2[0, :n], enc1[0, :n], atol=2e-5, rtol=1e-5)
    # The decoder's cross-attention ignores the padded frames too.
    tokens = jnp.array([[18, 3, 4, 5]])
    d1 = conformer.decode(_params(), tokens, enc1, None, config=CONFIG)
    mask = ctc.length_mask(len2, enc2.shape[1])
    d2 = conformer.decode(_params(), jnp.tile(tokens, (2, 1)), enc2, mask, config=CONFIG)
    np.testing.assert_allclose(d2[0], d1[0], atol=2e-5, rtol=1e-5)


def test_decoder_is_causal():
    enc, _ = _encode(_params(), _feats(1, 30), jnp.array([30]))
    a = conformer.decode(_params(), jnp.array([[18, 1, 2, 3]]), enc, None, config=CONFIG)
    b = conformer.decode(_params(), jnp.array([[18, 1, 2, 9]]), enc, None, config=CONFIG)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not np.allclose(a[:, 3], b[:, 3])


def test_nf4_params_run_and_equal_dequantised():
    params = _params()
    q = qtree.quantize_tree(params, qtree.match_any(conformer.QUANT_TARGETS), "nf4")
    quantised = [
        qtree.path_str(p)
        for p, leaf in jax.tree_util.tree_flatten_with_path(q, is_leaf=qtree.base.is_quantized)[0]
        if qtree.base.is_quantized(leaf)
    ]
    assert "encoder/embed/conv_0/kernel" in quantised
    assert "encoder/encoders_0/conv_module/depthwise_conv/kernel" in quantised
    assert "encoder/encoders_1/self_attn/linear_q/kernel" in quantised
    assert "decoder/embed" in quantised
    assert qtree.tree_nbytes(q) < qtree.tree_nbytes(params) / 4
    feats, lens = _feats(2, 40), jnp.array([40, 25])
    got, _ = _encode(q, feats, lens)
    want, _ = _encode(qtree.dequantize_tree(q), feats, lens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    labels, label_lens = jnp.array([[1, 2, 3], [4, 5, 6]]), jnp.array([3, 2])
    loss, _ = _loss(q, feats, lens, labels, label_lens)
    assert jnp.isfinite(loss)


def _lora(targets, *, nonzero: bool = False):
    cfg = lora_lib.LoraConfig(rank=2, alpha=4.0, targets=targets)
    lo = lora_lib.init(_params(), cfg, key=jax.random.key(7))
    if nonzero:
        lo = jax.tree.map(lambda x: x + 0.1, lo)
    return lo


def test_lora_targets_attention_and_pointwise_convs():
    lo = _lora(conformer.ATTENTION_TARGETS + conformer.CONV_TARGETS)
    paths = {
        qtree.path_str(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(
            lo, is_leaf=lambda x: isinstance(x, lora_lib.LoraWeights)
        )[0]
    }
    # 4 projections x (2 encoder self-attn + 2 decoder attn) + 2 pointwise convs x 2 layers.
    assert len(paths) == 4 * 4 + 2 * 2
    assert "encoder/encoders_0/conv_module/pointwise_conv1" in paths
    assert "decoder/decoders_0/src_attn/linear_out" in paths


def test_lora_with_zero_b_is_identity_and_nonzero_b_is_not():
    targets = conformer.ATTENTION_TARGETS + conformer.CONV_TARGETS
    feats, lens = _feats(2, 40), jnp.array([40, 25])
    labels, label_lens = jnp.array([[1, 2, 3], [4, 5, 6]]), jnp.array([3, 2])
    base, _ = _loss(_params(), feats, lens, labels, label_lens)
    same, _ = _loss(_params(), feats, lens, labels, label_lens, lora=_lora(targets))
    np.testing.assert_allclose(same, base, rtol=1e-6)
    other, _ = _loss(_params(), feats, lens, labels, label_lens, lora=_lora(targets, nonzero=True))
    assert abs(float(other) - float(base)) > 1e-3


def test_jit_grad_wrt_lora_on_nf4_base_with_dropout():
    q = qtree.quantize_tree(_params(), qtree.match_any(conformer.QUANT_TARGETS), "nf4")
    lo = _lora(conformer.ATTENTION_TARGETS)
    feats, lens = _feats(2, 40), jnp.array([40, 25])
    labels, label_lens = jnp.array([[1, 2, 3], [4, 5, 6]]), jnp.array([3, 2])

    @jax.jit
    def grad(lo, base, rng):
        f = lambda lo: conformer.loss(
            base,
            feats,
            lens,
            labels,
            label_lens,
            config=CONFIG,
            lora=lo,
            dropout_rng=rng,
            dropout_rate=0.1,
        )[0]
        return jax.grad(f)(lo)

    g = grad(lo, q, jax.random.key(3))
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert any(float(jnp.abs(x).max()) > 0 for x in leaves)


def test_bfloat16_compute_close_to_float32():
    feats, lens = _feats(1, 40), jnp.array([40])
    f32, _ = _encode(_params(), feats, lens)
    bf16, _ = conformer.encode(_params(), feats, lens, config=CONFIG, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16, np.float32), f32, atol=0.15, rtol=0.1)
