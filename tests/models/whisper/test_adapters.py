"""LoRA, quantised weights, dropout and gradients through the functional Whisper."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from references import whisper_hf as H

from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import tree as qtree

C = H.config()
ALL_LINEARS = (r"_proj$", r"fc\d$")


@functools.partial(jax.jit, static_argnames=("rate",))
def _logits(params, mel, tokens, lora=None, rng=None, rate=0.0):
    kw = {"config": C, "lora": lora, "dropout_rng": rng, "dropout_rate": rate}
    return whisper.decode(params, tokens, whisper.encode(params, mel, **kw), **kw)


@functools.cache
def _inputs():
    params = H.params_of(H.hf_tiny())
    mel = jnp.asarray(H.mel_batch(3, seed=2))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, H.EOT, (3, 7)))
    return params, mel, tokens


def _random_b(adapters, seed: int, scale: float = 0.3):
    leaves, treedef = jax.tree.flatten(adapters, is_leaf=_is_lora)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [w.replace(b=scale * jax.random.normal(k, w.b.shape)) for w, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


def _is_lora(x) -> bool:
    return isinstance(x, lora_lib.LoraWeights)


def test_zero_b_is_the_base_model_and_adapters_equal_merged_weights():
    params, mel, tokens = _inputs()
    cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=ALL_LINEARS)
    fresh = lora_lib.init(params, cfg, key=jax.random.key(0))
    base = _logits(params, mel, tokens)
    np.testing.assert_array_equal(_logits(params, mel, tokens, fresh), base)
    ad = _random_b(fresh, 1)
    adapted = _logits(params, mel, tokens, ad)
    assert float(jnp.abs(adapted - base).max()) > 1e-2  # every branch is wired in ...
    merged = _logits(lora_lib.merge(params, ad), mel, tokens)
    np.testing.assert_allclose(adapted, merged, atol=2e-4)  # ... exactly as the merged weights


def test_per_example_bank_equals_each_adapter_alone():
    params, mel, tokens = _inputs()
    cfg = lora_lib.LoraConfig(rank=2, targets=whisper_family.LORA_TARGETS)
    bank = lora_lib.stack(
        [_random_b(lora_lib.init(params, cfg, key=jax.random.key(s)), s) for s in range(2)]
    )
    who = jnp.asarray([1, 0, 1])
    mixed = _logits(params, mel, tokens, lora_lib.take(bank, who))
    for row, s in enumerate(np.asarray(who)):
        alone = _logits(params, mel[row : row + 1], tokens[row : row + 1], lora_lib.take(bank, s))
        np.testing.assert_allclose(mixed[row : row + 1], alone, atol=1e-5)


def test_nf4_everywhere_runs_and_stays_close():
    params, mel, tokens = _inputs()
    targets = [r"kernel$", r"embed_tokens$"]  # linears, convolutions and the embedding
    q = qtree.quantize_tree(params, qtree.match_any(targets), "nf4")
    assert sum(1 for _ in jax.tree.leaves(q, is_leaf=qtree.base.is_quantized)) > 0
    ref = _logits(params, mel, tokens)
    out = _logits(q, mel, tokens)
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert rel < 0.25
    np.testing.assert_allclose(out, _logits(qtree.dequantize_tree(q), mel, tokens), atol=1e-4)


def test_dropout_needs_a_key_and_is_reproducible():
    params, mel, tokens = _inputs()
    cfg = lora_lib.LoraConfig(rank=2, dropout=0.5, targets=whisper_family.LORA_TARGETS)
    ad = _random_b(lora_lib.init(params, cfg, key=jax.random.key(0)), 3)
    plain = _logits(params, mel, tokens, ad)
    key = jax.random.key(7)
    a = _logits(params, mel, tokens, ad, key)
    np.testing.assert_array_equal(a, _logits(params, mel, tokens, ad, key))
    assert float(jnp.abs(a - plain).max()) > 1e-3
    assert float(jnp.abs(a - _logits(params, mel, tokens, ad, jax.random.key(8))).max()) > 1e-3
    b = _logits(params, mel, tokens, None, key, rate=0.1)  # backbone dropout
    assert float(jnp.abs(b - _logits(params, mel, tokens)).max()) > 1e-3


def test_gradients_reach_only_the_adapters_of_a_quantised_model():
    params, mel, tokens = _inputs()
    q = qtree.quantize_tree(params, qtree.match_any(ALL_LINEARS[:1]), "nf4")
    ad = lora_lib.init(
        q, lora_lib.LoraConfig(rank=2, targets=whisper_family.LORA_TARGETS), key=jax.random.key(0)
    )

    @jax.jit
    def loss(ad, q):
        logits = _logits(q, mel, tokens[:, :-1], ad)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

    grads = jax.grad(loss)(ad, q)
    norms = [float(jnp.abs(g.b).max()) for g in jax.tree.leaves(grads, is_leaf=_is_lora)]
    assert len(norms) == 4 * (C.encoder_layers + 2 * C.decoder_layers) and min(norms) > 0
