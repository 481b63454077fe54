"""Stage-2 step: loss masking, accumulation, windowing, and sharded == single-device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import sharding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.testing import toy
from pqm_jax.train import optim, steps

CONFIG = toy.tiny_config(d_model=32, vocab_size=64, positions=8)
OPT = optim.OptimConfig(name="adamw", learning_rate=1e-2, weight_decay=0.01, clip_norm=1.0)


@pytest.fixture(scope="module")
def model():
    base = toy.quantized_model(CONFIG, key=jax.random.key(0))
    lora = toy.adapters(base, key=jax.random.key(1), dropout=0.1)
    return base, lora


def _single(lora, base, batch, step, key, optimizer=OPT):
    cfg = steps.StepConfig(model=CONFIG)
    fn = jax.jit(
        lambda lo, o, b, x, s, k: steps.si_step(
            lo, o, b, x, s, k, config=cfg, optimizer=optimizer, steps_per_epoch=4, total_steps=8
        )
    )
    return fn(lora, optim.init(optimizer, lora), base, batch, step, key)


def test_sharded_step_equals_single_device(model):
    base, lora = model
    assert jax.device_count() == 8, "tests/conftest.py should give 8 fake CPU devices"
    batch = toy.random_batch(CONFIG, (2, 8), seed=0)
    key, step = jax.random.key(7), jnp.int32(3)
    ref_lora, _, ref_m = _single(lora, base, batch, step, key)

    mesh_config = sharding.MeshConfig(data=4, model=2, base_rules=whisper_family.SHARD_RULES)
    mesh = sharding.make_mesh(mesh_config)
    base_s = sharding.base_shardings(base, mesh, mesh_config)
    # The base really is split over "model" (blocks kept whole), not silently replicated.
    q = base["decoder"]["layers_0"]["fc1"]["kernel"]
    assert base_s["decoder"]["layers_0"]["fc1"][
        "kernel"
    ].inner.codes.spec == jax.sharding.PartitionSpec("model")
    assert (q.inner.codes.shape[0] // 2) % q.inner.block_size == 0
    opt_state = optim.init(OPT, lora)
    fn = steps.jit_si_step(
        config=steps.StepConfig(model=CONFIG),
        optimizer=OPT,
        steps_per_epoch=4,
        total_steps=8,
        mesh=mesh,
        lora=lora,
        opt_state=opt_state,
        base_shardings=base_s,
    )
    placed = sharding.put(base, base_s)
    codes = placed["decoder"]["layers_0"]["fc1"]["kernel"].inner.codes
    assert len({s.data.shape for s in codes.addressable_shards}) == 1
    assert codes.addressable_shards[0].data.shape[0] == codes.shape[0] // 2
    out_lora, _, m = fn(lora, opt_state, placed, batch, step, key)
    assert abs(float(m["loss"]) - float(ref_m["loss"])) < 1e-5
    # Same updates up to float re-association of the data-parallel gradient sum: the Adam
    # update is ~lr = 1e-2 per weight, the difference 4 orders of magnitude below it.
    assert toy.tree_max_diff(out_lora, ref_lora) < 1e-5
    assert toy.tree_max_diff(out_lora, lora) > 1e-3


def test_padding_weights_do_not_matter(model):
    base, lora = model
    batch = toy.random_batch(CONFIG, (1, 4), seed=1)
    stats = jax.jit(functools.partial(steps.token_stats, config=steps.StepConfig(model=CONFIG)))
    ref = stats(lora, base, jax.tree.map(lambda x: x[0], batch))
    noisy = dict(batch)
    noisy["inputs"] = np.where(batch["weights"] > 0, batch["inputs"], 5)
    masked = np.roll(batch["weights"] > 0, 1, axis=-1) | (batch["weights"] > 0)
    noisy["targets"] = np.where(masked, batch["targets"], 7)
    got = stats(lora, base, jax.tree.map(lambda x: x[0], noisy))
    # Targets outside the weights change nothing; the prompt/text inputs are causal context.
    np.testing.assert_allclose(got["tokens"], ref["tokens"])
    assert float(ref["tokens"]) == float(batch["weights"].sum())


def test_accumulation_equals_full_batch(model):
    base, lora = model
    full = toy.random_batch(CONFIG, (1, 8), seed=2)
    split = jax.tree.map(lambda x: x.reshape(4, 2, *x.shape[2:]), full)
    grads = jax.jit(
        functools.partial(steps.gradients, config=steps.StepConfig(model=CONFIG), rng=None)
    )
    g_full, s_full = grads(lora, base, full)
    g_acc, s_acc = grads(lora, base, split)
    np.testing.assert_allclose(s_full["loss_sum"], s_acc["loss_sum"], rtol=1e-5)
    assert toy.tree_max_diff(g_full, g_acc) < 1e-6


def test_bfloat16_compute_runs(model):
    base, lora = model
    batch = toy.random_batch(CONFIG, (1, 2), seed=3)
    one = jax.tree.map(lambda x: x[0], batch)
    f32 = jax.jit(functools.partial(steps.token_stats, config=steps.StepConfig(CONFIG)))(
        lora, base, one
    )
    bf16 = steps.StepConfig(CONFIG, "bfloat16")
    bf = jax.jit(functools.partial(steps.token_stats, config=bf16))(lora, base, one)
    assert np.isfinite(float(bf["loss_sum"]))
    assert abs(float(bf["loss_sum"]) - float(f32["loss_sum"])) < 0.05 * float(f32["loss_sum"])


def test_schedules():
    exp = optim.OptimConfig(learning_rate=1.0, schedule="exponential", decay_rate=0.5)
    lr = optim.learning_rate(exp, jnp.arange(6), steps_per_epoch=jnp.int32(2), total_steps=6)
    np.testing.assert_allclose(lr, [1, 1, 0.5, 0.5, 0.25, 0.25])
    # per-speaker epoch lengths under vmap-like broadcasting
    lr = optim.learning_rate(
        exp, jnp.array([2, 2]), steps_per_epoch=jnp.array([2, 3]), total_steps=9
    )
    np.testing.assert_allclose(lr, [0.5, 1.0])
    warm = optim.OptimConfig(learning_rate=1.0, warmup_steps=4, schedule="cosine")
    lr = optim.learning_rate(warm, jnp.arange(10), steps_per_epoch=1, total_steps=10)
    np.testing.assert_allclose(lr[:4], [0.25, 0.5, 0.75, 1.0])
    assert float(lr[-1]) < 0.1
    with pytest.raises(ValueError, match="schedule"):
        optim.OptimConfig(schedule="step")


@pytest.mark.parametrize("warp", [-0.1, 1.0, 1.5])
def test_freq_warp_out_of_range_is_refused(warp):
    with pytest.raises(ValueError, match="freq_warp must be in"):
        steps.StepConfig(model=CONFIG, freq_warp=warp)


def test_freq_warp_in_range_is_accepted():
    assert steps.StepConfig(model=CONFIG, freq_warp=0.12).freq_warp == 0.12
