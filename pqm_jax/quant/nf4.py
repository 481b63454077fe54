"""NF4: 4-bit NormalFloat, bit for bit as bitsandbytes' `quantize_4bit(..., quant_type="nf4")`."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax.quant import base, fourbit

# The 16 NF4 code values, index 0..15 (ascending), as float32.
TABLE = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)


@struct.dataclass
class NF4Tensor(fourbit.FourBitTensor):
    """NF4 codes (uint8, two a byte) + per-block absmax; see `fourbit.FourBitTensor`."""

    TABLE: ClassVar[np.ndarray] = TABLE
    scheme: str = struct.field(pytree_node=False, default="nf4")


def quantize(x: Any, *, block_size: int = 64, double_quant: bool = False) -> NF4Tensor:
    """Quantises a float array to NF4.

    Args:
      x: float array of any shape; it is flattened row-major.
      block_size: one of 32..4096 (powers of two).
      double_quant: store the absmax as 8-bit codes (about 4.127 instead of 4.5 bits a weight).

    Returns:
      An `NF4Tensor` whose `.codes` is the packed uint8 array [ceil(n/2)] and, without double
      quantisation, `.absmax` the float32 per-block absmax; both equal bitsandbytes' on CPU.

    Raises:
      ValueError: for NaN/inf values, an empty array or an unsupported block size.
    """
    return fourbit.quantize_into(
        NF4Tensor,
        x,
        block_size=block_size,
        double_quant=double_quant,
        sorted_table=TABLE,
        order=range(16),
    )


def dequantize(q: NF4Tensor, dtype: Any = jnp.float32) -> jax.Array:
    """Code value x absmax per element, in float32, cast to `dtype`, in the original shape."""
    return q.dequantize(dtype)


base.register(
    base.Scheme(
        name="nf4",
        quantize=quantize,
        tensor_type=NF4Tensor,
        default_options={"block_size": 64, "double_quant": False},
        bits_per_weight=4.5,
        max_error=float(np.diff(TABLE).max()) / 2,
    )
)
