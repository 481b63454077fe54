"""One speaker's personalised model as plain dense weights, for engines that know no adapters.

The PQM system that `pqm_jax.eval.run` scores decodes with the run's quantised base and the
speaker's stage-3 adapters, nothing else: stage 3 starts every speaker from the stage-2
(speaker-independent) adapters and trains that same tree further, so the speaker's adapters
already hold the stage-2 update. They replace the stage-2 adapters; adding both would count
stage 2 twice. Merging therefore computes, for every adapted kernel ([in, out] layout),

    W' = dequant(W) + scale * A @ B          A: [in, r], B: [r, out]

and dequantises every other quantised leaf (convolutions, the token embedding, linears
without an adapter), so that `forward(W', x) == forward(W, x; A, B)` up to float rounding.

    params = merged.merge(base, adapters)                # dense numpy float32
    half = merged.rounded(params, np.float16)            # what a float16 file holds
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import lora as lora_lib
from pqm_jax.quant import tree as qtree


def merge(base: Any, adapters: Any | None) -> dict:
    """Dense float32 params (numpy) of `base` (maybe quantised) with `adapters` merged.

    Args:
      base: params tree; any leaf may be a `QuantizedTensor`.
      adapters: one speaker's adapter tree (module path -> `LoraWeights` a [in, r],
        b [r, out]), or None for the base alone. A bank (a leading speaker axis) is refused:
        take one speaker first (`lora.take(bank, i)`).

    Returns:
      The params tree with every leaf a float32 numpy array (same nesting as `base`).

    Raises:
      ValueError: an adapter without a base kernel, or a bank of adapters.
    """
    merged = base
    if adapters is not None:
        for leaf in jax.tree.leaves(adapters):
            if np.ndim(leaf) != 2:
                raise ValueError(
                    f"adapters of shape {np.shape(leaf)} are a bank (or not [in, r] / [r, out]): "
                    "merge takes one speaker's adapters (lora.take(bank, i))"
                )
        merged = lora_lib.merge(base, adapters, jnp.float32)
    dense = qtree.dequantize_tree(merged, jnp.float32)
    return jax.tree.map(lambda x: np.asarray(x, np.float32), dense)


def rounded(params: Any, dtype: Any) -> dict:
    """`params` rounded to `dtype` and back to float32 (the values a `dtype` file holds)."""
    return jax.tree.map(
        lambda x: np.asarray(x, np.float32).astype(dtype).astype(np.float32), params
    )
