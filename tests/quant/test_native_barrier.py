"""`quant.native.barrier.gradient_barrier`: an identity whose cotangent passes a native call.
Values and gradients bit-equal to the plain identity (in a residual stack, under vmap, in
bfloat16, through Whisper's loss), the call present in the gradient program and absent from the
forward one, and its switches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import lora as lora_lib
from pqm_jax.quant.native import barrier
from pqm_jax.testing import toy
from pqm_jax.train import steps

pytestmark = [
    pytest.mark.usefixtures("native_kernels"),  # tests/quant/conftest.py
    pytest.mark.skipif(not barrier.available(), reason="native kernels unavailable (no compiler)"),
]
CALL = f'custom_call_target="{barrier.TARGET}"'


def _stack(ws, x, gate):
    """A residual stack whose stream gradient is a running sum, each block's input gated."""
    for w in ws:
        x = gate(x)
        x = x + jnp.tanh(x @ w) * 0.5
    return jnp.sum(x * x)


def _inputs(dtype=jnp.float32, rows=40, width=24, depth=5):
    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.standard_normal((width, width)) * 0.3, dtype) for _ in range(depth)]
    return ws, jnp.asarray(rng.standard_normal((rows, width)), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_are_bit_equal_and_pass_the_call(dtype):
    ws, x = _inputs(dtype)
    grad = lambda gate: jax.jit(jax.grad(lambda ws, x: _stack(ws, x, gate), argnums=(0, 1)))
    want = grad(lambda x: x)(ws, x)
    got = grad(barrier.gradient_barrier)(ws, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    text = grad(barrier.gradient_barrier).lower(ws, x).compile().as_text()
    assert text.count(CALL) == len(ws)


def test_forward_and_vmapped_gradients():
    ws, x = _inputs()
    f = lambda x: _stack(ws, x, barrier.gradient_barrier)
    np.testing.assert_array_equal(jax.jit(f)(x), jax.jit(lambda x: _stack(ws, x, lambda y: y))(x))
    assert CALL not in jax.jit(f).lower(x).compile().as_text()  # primal: no call at all
    bank = jnp.stack([x, 2.0 * x, -x])
    program = jax.jit(jax.vmap(jax.grad(f)))
    got = program(bank)
    want = jax.jit(jax.vmap(jax.grad(lambda x: _stack(ws, x, lambda y: y))))(bank)
    np.testing.assert_array_equal(got, want)
    assert program.lower(bank).compile().as_text().count(CALL) == len(ws)  # one call per bank
    for i in range(3):  # each example's own gradient (XLA may block the batched products apart)
        np.testing.assert_allclose(got[i], jax.jit(jax.grad(f))(bank[i]), rtol=1e-5, atol=1e-5)


def _with_and_without(monkeypatch, loss, lora):
    """The compiled value-and-gradient of `loss` in the adapters, with the barrier and without."""
    program = lambda: jax.jit(jax.value_and_grad(loss)).lower(lora).compile()
    with_barrier = program()
    monkeypatch.setenv("PQM_NATIVE_BARRIER", "0")
    return with_barrier, program()


def test_whisper_adapter_gradients_are_bit_equal_with_the_barrier(monkeypatch):
    config = toy.tiny_config(layers=2)
    base = toy.quantized_model(config, key=jax.random.key(0))
    lora = toy.adapters(base, key=jax.random.key(1))
    batch = jax.tree.map(lambda a: a[0], toy.random_batch(config, (1, 2), seed=0))
    step = steps.StepConfig(model=config)

    loss = lambda lo: steps.token_stats(lo, base, batch, config=step)["loss_sum"]
    with_barrier, without = _with_and_without(monkeypatch, loss, lora)
    # 2 (encoder) + 3 (decoder) blocks a layer; the first block of each stack has no trainable
    # input below it, so its gradient is never formed
    assert with_barrier.as_text().count(CALL) == 2 * 2 + 3 * 2 - 2
    assert CALL not in without.as_text()
    (l1, g1), (l2, g2) = with_barrier(lora), without(lora)
    np.testing.assert_array_equal(l1, l2)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2))), (
        "gradients moved"
    )


def test_switched_off(monkeypatch):
    ws, x = _inputs()
    program = lambda: jax.jit(jax.grad(lambda x: _stack(ws, x, barrier.gradient_barrier)))
    monkeypatch.setenv("PQM_NATIVE_BARRIER", "0")
    assert CALL not in program().lower(x).compile().as_text()
    monkeypatch.setenv("PQM_NATIVE_BARRIER", "1")
    monkeypatch.setenv("PQM_NATIVE", "0")  # every kernel off, read when a program is traced
    assert not barrier.enabled()
    assert CALL not in program().lower(x).compile().as_text()
    monkeypatch.delenv("PQM_NATIVE")  # eight fake devices: kernels off unless asked for
    assert not barrier.enabled()
    assert CALL not in program().lower(x).compile().as_text()


def test_conformer_gradients_are_close_with_the_barrier(monkeypatch):
    """The Conformer's blocks (macaron FFN, attention, convolution, FFN; decoder self, source,
    FFN) pass the barrier too; its sums associate differently there: equal up to rounding."""
    from pqm_jax.models.conformer import model as conformer

    config = conformer.ConformerConfig(
        vocab_size=19, n_mels=16, d_model=32, encoder_layers=2, encoder_heads=4, encoder_ffn=48,
        kernel_size=7, decoder_layers=1, decoder_heads=4, decoder_ffn=40,
    )  # fmt: skip
    params = conformer.init(config, key=jax.random.key(0))
    lora = jax.tree.map(
        lambda x: x + 0.05,
        lora_lib.init(
            params,
            lora_lib.LoraConfig(rank=2, alpha=4.0, targets=conformer.ATTENTION_TARGETS),
            key=jax.random.key(1),
        ),
    )
    feats = jax.random.normal(jax.random.key(2), (2, 40, config.n_mels))
    lens, labels, label_lens = (
        jnp.array([40, 25]),
        jnp.array([[1, 2, 3], [4, 5, 6]]),
        jnp.array([3, 2]),
    )

    loss = lambda lo: conformer.loss(
        params, feats, lens, labels, label_lens, config=config, lora=lo
    )
    with_barrier, without = _with_and_without(monkeypatch, lambda lo: loss(lo)[0], lora)
    # 4 blocks per encoder layer, 3 per decoder layer, less those with nothing trainable below
    # them (adapters on attention only: layer 0's macaron and attention blocks; the decoder's first)
    assert with_barrier.as_text().count(CALL) == 4 * 2 + 3 * 1 - 3
    assert CALL not in without.as_text()
    (l1, g1), (l2, g2) = with_barrier(lora), without(lora)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        scale = max(float(np.abs(np.asarray(b)).max()), 1e-3)
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5 * scale
