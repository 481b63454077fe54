"""INT8: symmetric block-wise absmax quantisation, round to nearest, codes in [-127, 127]."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax.quant import base

BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


@struct.dataclass
class Int8Tensor(base.QuantizedTensor):
    """Children: `codes` int8 [n] (flattened), `absmax` float32 [n_blocks]. Static: shape etc."""

    codes: jax.Array
    absmax: jax.Array
    shape: tuple[int, ...] = struct.field(pytree_node=False)
    block_size: int = struct.field(pytree_node=False)
    dtype: str = struct.field(pytree_node=False)

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        n = math.prod(self.shape)
        total = self.absmax.shape[-1] * self.block_size
        vals = jnp.pad(self.codes.astype(jnp.float32), (0, total - n)).reshape(-1, self.block_size)
        out = (vals * (self.absmax / 127.0)[:, None]).reshape(-1)[:n]
        return out.reshape(self.shape).astype(dtype)


@functools.partial(jax.jit, static_argnames=("block_size",))
def _quantize_flat(flat: jax.Array, *, block_size: int) -> tuple[jax.Array, jax.Array]:
    n = flat.shape[0]
    nb = -(-n // block_size)
    blocks = jnp.pad(flat, (0, nb * block_size - n)).reshape(nb, block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    scaled = blocks * (127.0 / jnp.maximum(absmax, 1e-38))[:, None]
    codes = jnp.clip(jnp.round(scaled), -127, 127).astype(jnp.int8).reshape(-1)[:n]
    return codes, absmax


def quantize(x: Any, *, block_size: int = 64) -> Int8Tensor:
    """Quantises a float array to int8 with one float32 absmax per block of `block_size`."""
    base.check_block_size(block_size, BLOCK_SIZES)
    base.check_finite(x, "an Int8Tensor input")
    shape = tuple(int(d) for d in np.shape(x))
    if math.prod(shape) == 0:
        raise ValueError(f"cannot quantise an empty array of shape {shape}")
    codes, absmax = _quantize_flat(jnp.asarray(x, jnp.float32).reshape(-1), block_size=block_size)
    dtype = jnp.dtype(getattr(x, "dtype", jnp.float32)).name
    return Int8Tensor(codes=codes, absmax=absmax, shape=shape, block_size=block_size, dtype=dtype)


base.register(
    base.Scheme(
        name="int8",
        quantize=quantize,
        tensor_type=Int8Tensor,
        default_options={"block_size": 64},
        bits_per_weight=8.5,
        max_error=0.5 / 127,
    )
)
