"""FP4: bitsandbytes' other 4-bit type (1 sign, 2 exponent, 1 mantissa bit, normalised by 12)."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax.quant import base, fourbit

# Code values in bit-pattern order (index = the stored nibble), normalised to [-1, 1].
_RAW = [
    0.0,
    0.0625,
    8.0,
    12.0,
    4.0,
    6.0,
    2.0,
    3.0,
    -0.0,
    -0.0625,
    -8.0,
    -12.0,
    -4.0,
    -6.0,
    -2.0,
    -3.0,
]
TABLE = (np.asarray(_RAW, np.float32) / np.float32(12.0)).astype(np.float32)
# Quantisation searches the sorted values, then maps a sorted position back to its nibble.
ORDER = np.argsort(TABLE, kind="stable")
SORTED = TABLE[ORDER]


@struct.dataclass
class FP4Tensor(fourbit.FourBitTensor):
    """FP4 codes (uint8, two a byte) + per-block absmax; see `fourbit.FourBitTensor`."""

    TABLE: ClassVar[np.ndarray] = TABLE
    scheme: str = struct.field(pytree_node=False, default="fp4")


def quantize(x: Any, *, block_size: int = 64, double_quant: bool = False) -> FP4Tensor:
    """Quantises a float array to FP4 blocks; same layout and options as `nf4.quantize`."""
    return fourbit.quantize_into(
        FP4Tensor,
        x,
        block_size=block_size,
        double_quant=double_quant,
        sorted_table=SORTED,
        order=ORDER,
    )


def dequantize(q: FP4Tensor, dtype: Any = jnp.float32) -> jax.Array:
    return q.dequantize(dtype)


base.register(
    base.Scheme(
        name="fp4",
        quantize=quantize,
        tensor_type=FP4Tensor,
        default_options={"block_size": 64, "double_quant": False},
        bits_per_weight=4.5,
        max_error=float(np.diff(SORTED).max()) / 2,
    )
)
