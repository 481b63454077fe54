"""Quantising whole parameter pytrees, selected by path, and measuring their stored size.

`quantize_tree` is the one function that quantises a model: the run's backbone, `load_model`
and the benchmarks all call it, so a kernel's layout (and its NF4 codes) never depends on who
quantised it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqm_jax.quant import base


def path_str(path: tuple) -> str:
    """'encoder/layers_0/self_attn/q_proj/kernel' from a jax key path."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:
            parts.append(str(k))
    return "/".join(parts)


def match_any(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A path predicate: true when any regular expression in `patterns` matches (re.search)."""
    compiled = [re.compile(p) for p in patterns]
    return lambda path: any(c.search(path) for c in compiled)


@struct.dataclass
class Transposed(base.QuantizedTensor):
    """A quantised tensor stored transposed: `inner` holds w.T of a 2-D kernel w.

    Flax kernels are [in, out]; PyTorch (and bitsandbytes' `Linear4bit`) quantise [out, in], so
    blocks run along the input dimension. Quantising the transpose makes our blocks (and so our
    codes) identical to bitsandbytes' for the same layer.
    """

    inner: Any

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(reversed(self.inner.shape))

    @property
    def dtype(self) -> str:
        return self.inner.dtype

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        return self.inner.dequantize(dtype).T


def quantize_tree(
    params: Any,
    predicate: Callable[[str], bool],
    scheme: str = "nf4",
    *,
    torch_layout: bool = True,
    min_size: int = 0,
    **options: Any,
) -> Any:
    """Quantises every array leaf whose path satisfies `predicate`; other leaves pass through.

    Args:
      params: a pytree of arrays (nested dicts).
      predicate: `predicate(path_str) -> bool`, e.g. `match_any([r"_proj/kernel$", r"fc\\d/kernel$"])`.
      scheme: a registered scheme name.
      torch_layout: quantise 2-D kernels (leaves named "kernel", [in, out]) transposed, in
        PyTorch's [out, in] layout as bitsandbytes' Linear4bit does; the result dequantises to
        the original array. Other leaves (token embeddings [vocab, d], already PyTorch's
        layout) are quantised as stored, so their rows are whole blocks.
      min_size: leave arrays with fewer elements than this in full precision.
      **options: scheme options (block_size, double_quant, ...).
    """

    def visit(path, leaf):
        p = path_str(path)
        if base.is_quantized(leaf) or not predicate(p) or math.prod(np.shape(leaf)) < min_size:
            return leaf
        if torch_layout and np.ndim(leaf) == 2 and p.rsplit("/", 1)[-1] == "kernel":
            return Transposed(inner=base.quantize(jnp.asarray(leaf).T, scheme, **options))
        return base.quantize(leaf, scheme, **options)

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=base.is_quantized)


class NonFiniteWeights(ValueError):
    """A model's weights hold NaN or inf."""


def check_finite(params: Any, source: str) -> None:
    """Raises NonFiniteWeights naming the first tensor of `params` that holds NaN or inf (weights of
    `source`), before anything quantises or trains on it. Quantised leaves are skipped."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=base.is_quantized)[0]
    for path, leaf in flat:
        if base.is_quantized(leaf) or isinstance(leaf, jax.core.Tracer):
            continue
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise NonFiniteWeights(
                f"{source}: tensor {path_str(path)} {arr.shape} holds {bad} NaN/inf value(s); "
                "the checkpoint is damaged or was saved from a diverged run"
            )


def dequantize_tree(params: Any, dtype: Any = jnp.float32) -> Any:
    """Every quantised leaf replaced by its dense array."""
    return jax.tree.map(
        lambda w: base.dequantize(w, dtype) if base.is_quantized(w) else w,
        params,
        is_leaf=base.is_quantized,
    )


def tree_nbytes(tree: Any) -> int:
    """Bytes of every stored array in `tree` (codes, scales, dense arrays alike)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def tree_num_params(tree: Any) -> int:
    """Logical parameter count: a quantised tensor counts its logical elements, not its bytes."""
    leaves = jax.tree.leaves(tree, is_leaf=base.is_quantized)
    return sum(math.prod(x.shape) for x in leaves)
