"""Optimisers for the LoRA tree: optax moments + clipping, and a learning rate computed per step.

The learning rate is a pure function of the step, the epoch length and the run length, all of
which may be arrays: under `vmap` every speaker then follows its own schedule (its own epoch
length, its own position), which optax's count-based schedules cannot express. The optax chain
therefore stops before the learning rate; `apply` multiplies by it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "exponential")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule of one stage.

    Attributes:
      name: "adam", "adamw" (decoupled weight decay) or "sgd".
      learning_rate: peak learning rate.
      weight_decay: AdamW decay (ignored by "adam"/"sgd").
      b1, b2, eps: Adam moments.
      clip_norm: clip gradients to this global norm (0 = off).
      warmup_steps: linear warm-up from 0 to `learning_rate`.
      schedule: after warm-up: "constant"; "cosine" / "linear" decay to `final_fraction` x peak
        at the end of the run; "exponential": x `decay_rate` per epoch (the paper's stage 3).
      decay_rate: per-epoch factor of "exponential".
      final_fraction: end value of "cosine"/"linear" as a fraction of the peak.
      accumulate: micro-batches whose gradients are summed into one update.
    """

    name: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    decay_rate: float = 0.9
    final_fraction: float = 0.0
    accumulate: int = 1

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.name!r} unknown; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} unknown; use one of {SCHEDULES}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.accumulate < 1 or self.warmup_steps < 0 or self.clip_norm < 0:
            raise ValueError("accumulate >= 1, warmup_steps >= 0 and clip_norm >= 0 required")


def transform(config: OptimConfig) -> optax.GradientTransformation:
    """The optax chain up to (not including) the learning rate: clip -> moments -> decay."""
    parts = []
    if config.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    if config.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps))
    if config.name == "adamw" and config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    return optax.chain(*parts) if parts else optax.identity()


def learning_rate(
    config: OptimConfig, step: Any, *, steps_per_epoch: Any, total_steps: Any
) -> jax.Array:
    """Learning rate of update number `step` (0-based); every argument may be an array.

    Args:
      step: updates already applied.
      steps_per_epoch: updates per pass over the data (for "exponential").
      total_steps: length of the run (for "cosine"/"linear").

    Returns:
      float32 scalar (or the broadcast shape of the arguments).
    """
    step = jnp.asarray(step, jnp.float32)
    peak = jnp.float32(config.learning_rate)
    warm = jnp.float32(max(config.warmup_steps, 0))
    if config.warmup_steps > 0:
        ramp = jnp.minimum((step + 1.0) / warm, 1.0)
    else:
        ramp = jnp.float32(1.0)
    after = jnp.maximum(step - warm, 0.0)
    span = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - warm, 1.0)
    frac = jnp.clip(after / span, 0.0, 1.0)
    low = jnp.float32(config.final_fraction)
    if config.schedule == "constant":
        factor = jnp.float32(1.0)
    elif config.schedule == "cosine":
        factor = low + (1.0 - low) * 0.5 * (1.0 + jnp.cos(jnp.float32(math.pi) * frac))
    elif config.schedule == "linear":
        factor = 1.0 - (1.0 - low) * frac
    else:  # exponential, per epoch of this speaker
        epoch = jnp.floor(step / jnp.maximum(jnp.asarray(steps_per_epoch, jnp.float32), 1.0))
        factor = jnp.float32(config.decay_rate) ** epoch
    return peak * ramp * factor


def init(config: OptimConfig, lora: Any) -> Any:
    """Optimiser state for the LoRA tree (only for it: the base has none)."""
    return transform(config).init(lora)


def apply(
    config: OptimConfig, grads: Any, opt_state: Any, lora: Any, lr: jax.Array
) -> tuple[Any, Any]:
    """One update: (new lora, new optimiser state); `lr` from `learning_rate`."""
    updates, opt_state = transform(config).update(grads, opt_state, lora)
    lora = jax.tree.map(lambda p, u: p - lr.astype(p.dtype) * u, lora, updates)
    return lora, opt_state
