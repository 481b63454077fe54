"""Shared machinery of bitsandbytes-style block-wise 4-bit schemes (NF4, FP4).

Quantisation, exactly as bitsandbytes does it on CPU:
  1. flatten row-major, cut into blocks of `block_size` (the last one may be partial);
  2. absmax = max |x| per block (float32);
  3. scale: full blocks multiply by the float32 reciprocal `x * (1 / absmax)`, the partial last block
     divides `x / absmax` (bitsandbytes does both; they differ in rare last-bit cases);
  4. clip to [-1, 1], pick the nearest code (ties go to the lower code);
  5. pack two codes a byte, element 2j in the high nibble; an odd length pads a zero value.
Optional double quantisation stores the per-block absmax as 8-bit codes of the signed dynamic map,
in blocks of 256, around their mean.

Dequantisation is a table lookup: each nibble indexes the 16 code values, then a multiply by the
block's absmax. Whole tensors of whole blocks decode with a native kernel on CPU (`native`),
bit-identical to `_lookup`, which stays the path elsewhere and for gathered rows.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax.quant import base, native

BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
ABSMAX_BLOCK = 256  # block size of the second-level (double) quantisation, as bitsandbytes
_TINY = np.float32(1e-38)  # bitsandbytes clamps absmax to this before taking its reciprocal


def dynamic_map_signed() -> np.ndarray:
    """The 256 sorted values of bitsandbytes' signed dynamic 8-bit map (float32).

    Exponent e in 0..6 selects a decade 10^(e-6); a linear fraction grid of 2^e + 1 boundaries on
    [0.1, 1] gives 2^e midpoints per decade, mirrored for the negative half; then 0 and 1.0 are
    added and the list is padded with zeros to 256 entries.
    """
    values: list[float] = []
    for e in range(7):
        bounds = np.linspace(0.1, 1.0, 2**e + 1, dtype=np.float32)
        mids = ((bounds[:-1] + bounds[1:]) / np.float32(2.0)).astype(np.float32)
        decade = 10.0 ** (e - 6)
        values += [decade * float(m) for m in mids]
        values += [-decade * float(m) for m in mids]
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))
    return np.sort(np.asarray(values, dtype=np.float32))


DYNAMIC_MAP = dynamic_map_signed()


def _nearest_sorted(v: jax.Array, table: np.ndarray) -> jax.Array:
    """Index of the nearest entry of an ascending `table`; ties go to the lower index.

    Equals `searchsorted(midpoints, v, side="left")`: the count of midpoints strictly below v.
    """
    t = table.astype(np.float32)
    mids = jnp.asarray((t[:-1] + t[1:]) / np.float32(2.0))
    # 15 midpoints: comparing against all is fastest; 255 (the 8-bit map): binary search.
    method = "compare_all" if t.shape[0] <= 16 else "scan_unrolled"
    return jnp.searchsorted(mids, v, side="left", method=method).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("block_size", "sorted_table", "order"))
def _quantize_flat(
    flat: jax.Array, *, block_size: int, sorted_table: tuple[float, ...], order: tuple[int, ...]
) -> tuple[jax.Array, jax.Array]:
    """flat float32 [n] -> (packed uint8 [ceil(n/2)], absmax float32 [ceil(n/block_size)])."""
    n = flat.shape[0]
    n_blocks = -(-n // block_size)
    rem = n % block_size
    blocks = jnp.pad(flat, (0, n_blocks * block_size - n)).reshape(n_blocks, block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    # bitsandbytes clamps absmax to 1e-38 before the reciprocal. XLA flushes subnormals (1e-38 is
    # one) to zero, so a zero block would give 0 * inf = NaN: zero (or subnormal) blocks are
    # scaled to exactly 0 instead, which is what bitsandbytes gets for an all-zero block.
    live = absmax > 0
    safe = jnp.where(live, absmax, 1.0)
    scaled = jnp.where(live[:, None], blocks * (jnp.float32(1.0) / safe)[:, None], 0.0)
    if rem:
        scaled = scaled.at[-1].set(jnp.where(live[-1], blocks[-1] / safe[-1], 0.0))
        # bitsandbytes stores the clamped value for the partial last block: 1e-38 when it is zero.
        tiny = jax.lax.bitcast_convert_type(jnp.uint32(_TINY.view(np.uint32)), jnp.float32)
        absmax = absmax.at[-1].set(jnp.where(live[-1], absmax[-1], tiny))
    scaled = jnp.clip(scaled, -1.0, 1.0).reshape(-1)[: n + (n % 2)]
    idx = _nearest_sorted(scaled, np.asarray(sorted_table, np.float32))
    if order != tuple(range(16)):
        idx = jnp.asarray(np.asarray(order, np.uint8))[idx]
    pairs = idx.reshape(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1], absmax


@functools.partial(jax.jit, static_argnames=("block",))
def _quantize_absmax(absmax: jax.Array, *, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Double quantisation: absmax [m] -> (uint8 codes [m], float32 scales, float32 offset)."""
    offset = jnp.mean(absmax)
    v = absmax - offset
    m = v.shape[0]
    nb = -(-m // block)
    vb = jnp.pad(v, (0, nb * block - m)).reshape(nb, block)
    scale = jnp.max(jnp.abs(vb), axis=1)
    live = scale > 0
    scaled = jnp.where(live[:, None], vb * (1.0 / jnp.where(live, scale, 1.0))[:, None], 0.0)
    codes = _nearest_sorted(jnp.clip(scaled, -1.0, 1.0).reshape(-1)[:m], DYNAMIC_MAP)
    return codes, scale, offset


def _dequantize_absmax(codes: jax.Array, scale: jax.Array, offset: jax.Array) -> jax.Array:
    """absmax = DYNAMIC_MAP[code] * scale of its 256-block + offset, reshaped into 256-blocks (no
    per-element index gather), rounded twice (product, then sum) as bitsandbytes does.

    XLA's CPU backend contracts a multiply that feeds an add into one fused multiply-add in some
    fusions and not in others (an optimisation barrier does not stop it), so the same absmax
    decoded to different bits in different programs (jitted against eager; the native kernel,
    which takes absmax as an input, against the XLA path). The select below is
    a no-op on values (NaN stays NaN) that stands between the multiply and the add, and XLA does
    not contract across it.
    """
    m = codes.shape[0]
    nb = scale.shape[0]
    padded = jnp.pad(codes, (0, nb * ABSMAX_BLOCK - m)).reshape(nb, ABSMAX_BLOCK)
    product = jnp.asarray(DYNAMIC_MAP)[padded] * scale[:, None]
    product = jnp.where(jnp.isnan(product), jnp.float32(jnp.nan), product)
    return product.reshape(-1)[:m] + offset


@struct.dataclass
class FourBitTensor(base.QuantizedTensor):
    """Fields shared by the block-wise 4-bit schemes; a subclass sets `TABLE` (16 code values) and
    is decorated with `flax.struct.dataclass` again to register its own pytree type.

    Children: `codes` uint8 [ceil(n/2)]; `absmax` float32 [n_blocks] (uint8 codes with double
    quantisation); `absmax_scale` float32 [ceil(n_blocks/256)] and `absmax_offset` float32 [] with
    double quantisation, else None. Static: `shape`, `block_size`, `dtype`, and `scheme`, which
    each subclass sets to its own name.

    Why `scheme` is static data: in JAX 0.10 two pytree definitions of different dataclass types
    with equal static fields compare equal (while their hashes differ), so jit's cache could hand
    an FP4 tensor the program traced for an NF4 one of the same shape, whose table is a constant
    in it: FP4 codes decoded with the NF4 table. It happened in about 1 of 8 runs of a test file
    that jits the same function for both (the wip fused-matvec tests); with the scheme in the
    static data the two definitions differ (tests/quant/test_schemes.py).
    """

    codes: jax.Array
    absmax: jax.Array
    absmax_scale: Any
    absmax_offset: Any
    shape: tuple[int, ...] = struct.field(pytree_node=False)
    block_size: int = struct.field(pytree_node=False)
    dtype: str = struct.field(pytree_node=False)
    scheme: str = struct.field(pytree_node=False, default="")

    TABLE: ClassVar[np.ndarray]

    def absmax_f32(self) -> jax.Array:
        """Per-block absmax in float32 (decoded from its 8-bit codes under double quantisation)."""
        if self.absmax_scale is None:
            return self.absmax
        return _dequantize_absmax(self.absmax, self.absmax_scale, self.absmax_offset)

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def _whole_blocks(self) -> bool:
        """True when the codes fill whole blocks exactly (no odd length, no partial last block)."""
        n = math.prod(self.shape)
        return n % self.block_size == 0 and self.block_size % 2 == 0

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        absmax = self.absmax_f32()
        if self._whole_blocks():
            # The native CPU kernel where it is available; `_lookup` elsewhere (same bits).
            xla = functools.partial(_lookup, self.TABLE, block=self.block_size)
            flat = native.decode(
                self.codes, absmax, table=self.TABLE, block=self.block_size, xla=xla
            )
            return flat.reshape(self.shape).astype(dtype)
        n = math.prod(self.shape)
        table = jnp.asarray(self.TABLE)
        # Two 16-entry lookups (high and low nibble), interleaved: element 2j is the high nibble.
        vals = jnp.stack([table[self.codes >> 4], table[self.codes & 15]], axis=-1).reshape(-1)
        total = absmax.shape[-1] * self.block_size
        vals = jnp.pad(vals[:n], (0, total - n))
        out = (vals.reshape(-1, self.block_size) * absmax[:, None]).reshape(-1)[:n]
        return out.reshape(self.shape).astype(dtype)

    def rows(self, ids: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
        """Rows `ids` of a 2-D [vocab, d] tensor, decoded from their own codes only (an embedding
        lookup that never forms the whole table) when d is a whole number of blocks."""
        if len(self.shape) != 2 or self.shape[1] % self.block_size or not self._whole_blocks():
            return self.dequantize(dtype)[ids]
        vocab, d = self.shape
        per_row = d // self.block_size
        codes = self.codes.reshape(vocab, d // 2)[ids]
        absmax = self.absmax_f32().reshape(vocab, per_row)[ids]
        out = _lookup(self.TABLE, codes, absmax, self.block_size)
        return out.reshape(*ids.shape, d).astype(dtype)


def _lookup(table: np.ndarray, codes: jax.Array, absmax: jax.Array, block: int) -> jax.Array:
    """Decoded values of whole blocks: codes [..., n/2] (two a byte, high nibble first), absmax
    [..., n/block] -> [..., n/block, block]. Each block's 16 code values are scaled once, then
    both nibbles index that scaled table (one gather per nibble, nothing materialised between)."""
    scaled = jnp.asarray(table)[None, :] * absmax.reshape(-1, 1)  # [blocks, 16]
    pairs = codes.reshape(-1, block // 2)
    hi = jnp.take_along_axis(scaled, (pairs >> 4).astype(jnp.int32), axis=1)
    lo = jnp.take_along_axis(scaled, (pairs & 15).astype(jnp.int32), axis=1)
    return jnp.stack([hi, lo], axis=-1).reshape(*absmax.shape, block)


def quantize_into(
    cls: type, x: Any, *, block_size: int, double_quant: bool, sorted_table: np.ndarray, order
) -> Any:
    """Quantises `x` into an instance of the FourBitTensor dataclass `cls`."""
    base.check_block_size(block_size, BLOCK_SIZES)
    base.check_finite(x, f"a {cls.__name__} input")
    shape = tuple(int(d) for d in np.shape(x))
    if math.prod(shape) == 0:
        raise ValueError(f"cannot quantise an empty array of shape {shape}")
    dtype = jnp.dtype(getattr(x, "dtype", jnp.float32)).name
    flat = jnp.asarray(x, jnp.float32).reshape(-1)
    codes, absmax = _quantize_flat(
        flat,
        block_size=block_size,
        sorted_table=tuple(float(v) for v in sorted_table),
        order=tuple(int(i) for i in order),
    )
    scale = offset = None
    if double_quant:
        absmax, scale, offset = _quantize_absmax(absmax, block=ABSMAX_BLOCK)
    return cls(
        codes=codes,
        absmax=absmax,
        absmax_scale=scale,
        absmax_offset=offset,
        shape=shape,
        block_size=block_size,
        dtype=dtype,
    )
