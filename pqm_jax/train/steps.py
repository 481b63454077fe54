"""Teacher-forced loss, token accuracy, and the speaker-independent (stage 2) training step.

A batch is a dict of arrays:
    mel      [B, n_mels, frames]  log-mel of one audio window (frames = 100 x window seconds)
    inputs   [B, T] int32         decoder input: prompt + text + end-of-text, padded
    targets  [B, T] int32         inputs shifted left by one (the token each position predicts)
    weights  [B, T] float32       1 on text and end-of-text targets, 0 on the prompt and padding
A training batch carries a leading micro-batch axis [A, B, ...] (A = gradient accumulation).

The three pytrees stay apart: gradients are taken as `jax.grad(loss)(lora, base, batch)`; the
optimiser state belongs to the LoRA tree only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pqm_jax import jit_cache, models, sharding
from pqm_jax.train import optim

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What a step computes (hashable: a static argument of jit).

    Attributes:
      model: the architecture config of a registered family (`pqm_jax.models`), already cut to
        the training audio window (`Family.window`).
      dtype: compute dtype of activations, "float32" or "bfloat16" (LoRA weights, optimiser
        state and the loss stay float32).
      dropout: residual/activation dropout of the backbone (Whisper checkpoints: 0). LoRA
        dropout is a property of the adapters.
      trainable: "lora" (the trained tree is the adapters over a frozen base) or "backbone"
        (the trained tree is the model itself and the base argument is ignored: pretraining).
      ctc_weight: weight of the CTC term of a joint CTC/attention loss (families without a
        CTC head ignore it).
      spec_augment: SpecAugment the features when a dropout key is given (families that
        support it).
      freq_warp: warp each training utterance's mel axis by a factor drawn from
        1 +- freq_warp when a dropout key is given (0 = off; families that support it).
    """

    model: Any
    dtype: str = "float32"
    dropout: float = 0.0
    trainable: str = "lora"
    ctc_weight: float = 0.3
    spec_augment: bool = False
    freq_warp: float = 0.0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"compute dtype {self.dtype!r} unknown; use one of {DTYPES}")
        if self.trainable not in ("lora", "backbone"):
            raise ValueError(f"trainable must be lora or backbone, got {self.trainable!r}")
        if not 0.0 <= self.freq_warp < 1.0:
            raise ValueError(
                f"freq_warp must be in [0, 1) (a warp factor is drawn from 1 +- freq_warp), "
                f"got {self.freq_warp!r}"
            )


def token_stats(
    lora: Any,
    base: dict,
    batch: dict,
    *,
    config: StepConfig,
    rng: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Sums over the batch's weighted target tokens (float32 scalars), by the model's family
    (`models.of(config.model).token_stats`).

    Returns:
      {"loss_sum": sum of token cross-entropies, "correct": argmax hits, "tokens": weight sum}.
      A Conformer's loss_sum is its joint CTC-attention loss summed over utterances.
    """
    if config.trainable == "backbone":
        base, lora = lora, None
    return models.of(config.model).token_stats(
        base,
        lora,
        batch,
        model=config.model,
        dtype=config.dtype,
        dropout=config.dropout,
        rng=rng,
        ctc_weight=config.ctc_weight,
        spec_augment=config.spec_augment,
        freq_warp=config.freq_warp,
    )


def _loss_sum(lora, base, batch, config, rng):
    stats = token_stats(lora, base, batch, config=config, rng=rng)
    return stats["loss_sum"], stats


def gradients(
    lora: Any, base: dict, batch: dict, *, config: StepConfig, rng: jax.Array | None
) -> tuple[Any, dict[str, jax.Array]]:
    """Gradient of the mean token loss over all A micro-batches of `batch` [A, B, ...].

    Micro-batch gradients of the loss *sums* are added, then divided by the total token count,
    so accumulation gives the gradient of the full batch's mean (no 1/A weighting error when
    micro-batches hold different numbers of tokens).
    """
    grad_fn = jax.grad(_loss_sum, has_aux=True)
    n_micro = jax.tree.leaves(batch)[0].shape[0]

    def micro(i, b):
        return grad_fn(lora, base, b, config, None if rng is None else jax.random.fold_in(rng, i))

    if n_micro == 1:
        g, stats = micro(0, jax.tree.map(lambda x: x[0], batch))
    else:

        def body(carry, xs):
            i, b = xs
            g_i, s_i = micro(i, b)
            return jax.tree.map(jnp.add, carry, (g_i, s_i)), None

        zero_g = jax.tree.map(jnp.zeros_like, lora)
        zero_s = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "correct", "tokens")}
        (g, stats), _ = jax.lax.scan(body, (zero_g, zero_s), (jnp.arange(n_micro), batch))
    total = jnp.maximum(stats["tokens"], 1.0)
    return jax.tree.map(lambda x: x / total, g), stats


def update(
    lora: Any,
    opt_state: Any,
    base: dict,
    batch: dict,
    step: jax.Array,
    *,
    config: StepConfig,
    optimizer: optim.OptimConfig,
    rng: jax.Array | None,
    steps_per_epoch: Any,
    total_steps: Any,
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One optimiser update of `lora` on `batch` [A, B, ...]; the base is untouched.

    Returns:
      (lora, opt_state, metrics): loss (mean token cross-entropy), accuracy, tokens, lr,
      grad_norm (before clipping), all float32 scalars.
    """
    grads, stats = gradients(lora, base, batch, config=config, rng=rng)
    lr = optim.learning_rate(
        optimizer, step, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    new_lora, new_opt = optim.apply(optimizer, grads, opt_state, lora, lr)
    total = jnp.maximum(stats["tokens"], 1.0)
    metrics = {
        "loss": stats["loss_sum"] / total,
        "accuracy": stats["correct"] / total,
        "tokens": stats["tokens"],
        "lr": lr,
        "grad_norm": optax.tree.norm(grads),
    }
    return new_lora, new_opt, metrics


def step_key(key: jax.Array, step: Any) -> jax.Array:
    """The dropout key of update `step` (and of nothing else): fold_in(key, step)."""
    return jax.random.fold_in(key, step)


def si_step(
    lora: Any,
    opt_state: Any,
    base: dict,
    batch: dict,
    step: jax.Array,
    key: jax.Array,
    *,
    config: StepConfig,
    optimizer: optim.OptimConfig,
    steps_per_epoch: int,
    total_steps: int,
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """Stage-2 step: `update` with the dropout key folded from `step`."""
    return update(
        lora,
        opt_state,
        base,
        batch,
        step,
        config=config,
        optimizer=optimizer,
        rng=step_key(key, step),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )


def jit_si_step(
    *,
    config: StepConfig,
    optimizer: optim.OptimConfig,
    steps_per_epoch: int,
    total_steps: int,
    mesh: jax.sharding.Mesh,
    lora: Any,
    opt_state: Any,
    base_shardings: Any,
) -> Any:
    """`si_step` as one `jax.jit` with explicit shardings over `mesh`.

    LoRA tree, optimiser state, step, key and metrics are replicated; the base follows
    `base_shardings` (maybe split over "model"); the batch [A, B, ...] is split over "data"
    along B. `lora`/`opt_state` (arrays or abstract) only give the tree structures.

    Returns:
      f(lora, opt_state, base, batch, step, key) -> (lora, opt_state, metrics).
    """
    fn = functools.partial(
        si_step,
        config=config,
        optimizer=optimizer,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
    rep = sharding.replicated(mesh)
    lora_s = sharding.tree_replicated(lora, mesh)
    opt_s = sharding.tree_replicated(opt_state, mesh)
    batch_s = sharding.leading(mesh, axis=1)
    key = (
        "si_step",
        config,
        optimizer,
        steps_per_epoch,
        total_steps,
        mesh,
        jit_cache.tree_key(lora),
    )
    key += (jit_cache.tree_key(opt_state), jit_cache.tree_key(base_shardings))
    return jit_cache.cached(
        key,
        lambda: jax.jit(
            fn,
            in_shardings=(lora_s, opt_s, base_shardings, batch_s, rep, rep),
            out_shardings=(lora_s, opt_s, rep),
        ),
    )


def jit_eval(*, config: StepConfig, mesh: jax.sharding.Mesh, lora: Any, base_shardings: Any) -> Any:
    """Jitted `token_stats` (no dropout) for dev batches [B, ...] split over "data".

    Returns:
      f(lora, base, batch) -> {"loss_sum", "correct", "tokens"} (replicated scalars).
    """
    rep = sharding.replicated(mesh)
    return jit_cache.cached(
        ("eval", config, mesh, jit_cache.tree_key(lora), jit_cache.tree_key(base_shardings)),
        lambda: jax.jit(
            functools.partial(token_stats, config=config, rng=None),
            in_shardings=(
                sharding.tree_replicated(lora, mesh),
                base_shardings,
                sharding.leading(mesh),
            ),
            out_shardings=rep,
        ),
    )
