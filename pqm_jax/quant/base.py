"""The quantised-tensor protocol and the scheme registry.

A quantised tensor is a registered pytree (a `flax.struct.dataclass`): its arrays (codes, scales) are
children, while its logical shape, block size and dtype are static metadata. A scheme is one file that
defines such a dataclass and a `quantize` function, then calls `register` once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class QuantizedTensor:
    """Base class of every quantised tensor.

    Subclasses are `flax.struct.dataclass`es with static fields `shape` (the logical shape) and
    `dtype` (the dtype the tensor was quantised from), and implement `dequantize`.
    """

    shape: tuple[int, ...]

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        """Returns the dense array of logical `shape`, in `dtype`."""
        raise NotImplementedError

    def rows(self, ids: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
        """Rows `ids` of a 2-D tensor (an embedding lookup); a scheme may decode only those."""
        return self.dequantize(dtype)[ids]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: the sum over the array children."""
        return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(self))

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} refuses silent conversion to a dense array; "
            "call .dequantize() or pqm_jax.quant.dequantize(w) explicitly."
        )

    def __jax_array__(self):
        raise TypeError(
            f"{type(self).__name__} is not a jax array; call .dequantize() explicitly, or pass it to "
            "pqm_jax.layers.dense which dequantises by table lookup."
        )


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A registered quantisation scheme.

    Attributes:
      name: registry key, e.g. "nf4".
      quantize: `quantize(x, *, block_size, **options) -> QuantizedTensor`.
      tensor_type: the `QuantizedTensor` subclass it produces.
      default_options: keyword options used when the caller gives none (e.g. block size).
      bits_per_weight: nominal storage cost with the default options, for reports.
      max_error: worst-case |x - dequantize(quantize(x))| as a fraction of the block's absmax
        (half the largest gap between adjacent code values), without double quantisation.
    """

    name: str
    quantize: Callable[..., QuantizedTensor]
    tensor_type: type
    default_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    bits_per_weight: float = 0.0
    max_error: float = 1.0


_SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    """Adds `scheme` to the registry; re-registering the same name replaces it."""
    if not issubclass(scheme.tensor_type, QuantizedTensor):
        raise TypeError(f"{scheme.tensor_type!r} must subclass pqm_jax.quant.base.QuantizedTensor")
    _SCHEMES[scheme.name] = scheme
    return scheme


def registered_schemes() -> tuple[str, ...]:
    """Names of all registered schemes, sorted."""
    return tuple(sorted(_SCHEMES))


def get_scheme(name: str) -> Scheme:
    """Looks up a scheme by name, with a helpful error for an unknown one."""
    try:
        return _SCHEMES[name]
    except KeyError:
        raise KeyError(
            f"unknown quantisation scheme {name!r}; registered: {', '.join(registered_schemes())}"
        ) from None


def quantize(x: Any, scheme: str, **options: Any) -> QuantizedTensor:
    """Quantises `x` with the named scheme; options override the scheme's defaults."""
    s = get_scheme(scheme)
    return s.quantize(x, **{**s.default_options, **options})


def accepted_options(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of `options` that `scheme` takes (those in its `default_options`), so one
    set of run options (block size, double quantisation) serves every scheme."""
    known = get_scheme(scheme).default_options if scheme in _SCHEMES else {}
    return {k: v for k, v in options.items() if k in known}


def is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedTensor)


def dequantize(w: Any, dtype: Any = None) -> jax.Array:
    """Dense view of `w`: dequantises a `QuantizedTensor`, passes an array through (cast to dtype).

    Raises:
      TypeError: for anything that is neither an array nor a registered quantised tensor.
    """
    if isinstance(w, QuantizedTensor):
        return w.dequantize(jnp.float32 if dtype is None else dtype)
    if isinstance(w, jax.Array | np.ndarray):
        return w if dtype is None else w.astype(dtype)
    raise TypeError(
        f"expected a jax/numpy array or a registered QuantizedTensor, got {type(w).__name__}; "
        f"registered schemes: {', '.join(registered_schemes())}"
    )


def check_finite(x: Any, what: str = "input") -> None:
    """Raises ValueError when a concrete `x` holds NaN or inf (no-op on tracers under jit)."""
    if isinstance(x, jax.core.Tracer):
        return
    arr = np.asarray(x)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"cannot quantise {what}: it holds {bad} NaN/inf value(s) of {arr.size}; "
            "block-wise absmax scaling would turn the whole block into NaN. Clean the weights first."
        )


def check_block_size(block_size: int, allowed: tuple[int, ...]) -> None:
    if block_size not in allowed:
        raise ValueError(f"block_size must be one of {allowed}, got {block_size}")
