"""LoRA adapters as a pytree of their own, separate from the (frozen, maybe quantised) base.

The adapter tree mirrors the base params nesting down to the module: the adapter of the kernel at
`decoder/layers_0/self_attn/q_proj/kernel` lives at `decoder/layers_0/self_attn/q_proj` as a
`LoraWeights(a [in, r], b [r, out])`. Scale and dropout rate are static metadata, so gradients flow
only to `a` and `b`, and a bank of adapters is the same tree with a leading speaker axis.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pqm_jax.quant import base
from pqm_jax.quant import tree as qtree


@struct.dataclass
class LoraWeights:
    """One adapter: y += scale * dropout(x) @ a @ b. a: [in, r], b: [r, out] (maybe [S, ...])."""

    a: jax.Array
    b: jax.Array
    scale: float = struct.field(pytree_node=False)
    dropout: float = struct.field(pytree_node=False, default=0.0)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Which modules get adapters and how they are sized.

    Attributes:
      rank: r.
      alpha: scale numerator: scale = alpha / r, or alpha / sqrt(r) with `rslora`.
      targets: regular expressions searched in the module path (the kernel path without
        '/kernel'); () = the model family's default (`pqm_jax.models.get(name).lora_targets`),
        which a run fills in (see `with_targets`).
      dropout: dropout rate on the LoRA branch input (training only).
      rslora: rank-stabilised scaling.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()
    dropout: float = 0.0
    rslora: bool = False

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        for t in self.targets:
            try:
                re.compile(t)
            except re.error as e:
                raise ValueError(f"LoRA target {t!r} is not a regular expression: {e}") from None

    def with_targets(self, default: tuple[str, ...]) -> LoraConfig:
        """This config, with `default` as its targets when it names none."""
        return self if self.targets else dataclasses.replace(self, targets=tuple(default))

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def _kernels(params: Any) -> list[tuple[str, Any]]:
    """(module path, kernel) for every 2-D leaf named 'kernel'."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=base.is_quantized)[0]
    out = []
    for path, leaf in flat:
        p = qtree.path_str(path)
        if p.endswith("/kernel") and len(leaf.shape) == 2:
            out.append((p[: -len("/kernel")], leaf))
    return out


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for k in parents:
        tree = tree.setdefault(k, {})
    tree[last] = value


def init(params: Any, config: LoraConfig, *, key: jax.Array) -> dict:
    """Adapters for every module whose path matches `config.targets`.

    A is Kaiming-uniform with a = sqrt(5) over fan_in (PyTorch's nn.Linear default, i.e. U(+-1/sqrt
    (in))); B is zero, so the adapted model starts equal to the base. Each module's key is folded from
    its path, so adding a target never changes the others' initialisation.

    Raises:
      ValueError: when no module matches (a typo in `targets` would otherwise train nothing),
        or when `rank` exceeds a matched layer's width.
    """
    if not config.targets:
        raise ValueError(
            "LoraConfig.targets is empty: name the modules to adapt, e.g. the model family's "
            "defaults, `config.with_targets(pqm_jax.models.get('tiny.en').lora_targets)`"
        )
    match = qtree.match_any(config.targets)
    tree: dict = {}
    for path, kernel in _kernels(params):
        if not match(path):
            continue
        d_in, d_out = kernel.shape
        if config.rank > min(d_in, d_out):
            raise ValueError(
                f"LoRA rank {config.rank} exceeds the width of {path} ({d_in} x {d_out}): the "
                f"update cannot have rank above {min(d_in, d_out)}; lower lora.rank"
            )
        k = jax.random.fold_in(key, zlib.crc32(path.encode()))
        bound = 1.0 / math.sqrt(d_in)
        a = jax.random.uniform(k, (d_in, config.rank), jnp.float32, -bound, bound)
        b = jnp.zeros((config.rank, d_out), jnp.float32)
        _set(tree, path, LoraWeights(a=a, b=b, scale=config.scale, dropout=config.dropout))
    if not tree:
        raise ValueError(f"no module path matches LoRA targets {config.targets}")
    return tree


def sub(tree: Any, *keys: str) -> Any:
    """tree[k1][k2]..., or None when `tree` is None or a key is absent (no adapter there)."""
    for k in keys:
        if tree is None or isinstance(tree, LoraWeights):
            return None
        tree = tree.get(k)
    return tree


@jax.custom_vjp
def _low_rank(rows: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """(rows @ a) @ b for rows [n, in], a [in, r], b [r, out]."""
    return (rows @ a) @ b


def _low_rank_fwd(rows, a, b):
    t = rows @ a
    return t @ b, (rows, t, a, b)


def _low_rank_bwd(res, g):
    """Gradients as products whose outputs are [r, in] / [r, out] wide, not [in, r].

    The gradient of a is formed as (dt.T @ rows).T. Left to autodiff, XLA folds that transpose
    into the product and computes an [in, r] output with r (8) as its minor axis, which its CPU
    backend runs 5x slower than the [r, in] one (48 such products took 58 ms of a 1.1 s
    16-speaker step of tiny.en); the barrier keeps the transpose (of r x in numbers) outside.
    """
    rows, t, a, b = res
    dt = g @ b.T
    da = jax.lax.optimization_barrier(dt.T @ rows).T
    return dt @ a.T, da, t.T @ g


_low_rank.defvjp(_low_rank_fwd, _low_rank_bwd)


def branch(x: jax.Array, lora: LoraWeights, *, rng: jax.Array | None = None) -> jax.Array:
    """scale * dropout(x) @ a @ b, [..., in] -> [..., out]; a per-example bank is [B, in, r].

    The rows are flattened to one axis and the scale goes onto b (r x out numbers, not the
    n x out product). Contracting [batch, time] as two axes made XLA's CPU backend recompute the
    whole residual-gradient chain in a transposed layout for every adapted projection: a
    16-speaker adaptation step of tiny.en took 1.98 s with it and 1.10 s without
    (bench/bench_adapt_limit.py's program, 2 cores).
    """
    h = x
    if rng is not None and lora.dropout > 0.0:
        keep = jax.random.bernoulli(rng, 1.0 - lora.dropout, x.shape)
        h = jnp.where(keep, x / (1.0 - lora.dropout), 0.0).astype(x.dtype)
    a = lora.a.astype(x.dtype)
    b = lora.b.astype(x.dtype) * jnp.asarray(lora.scale, x.dtype)
    if a.ndim == 3:  # per-example adapters gathered from a bank: row i uses a[i], b[i]
        rows = h.reshape(h.shape[0], -1, h.shape[-1])
        out = jnp.einsum("bnr,bro->bno", jnp.einsum("bni,bir->bnr", rows, a), b)
    else:
        out = _low_rank(h.reshape(-1, h.shape[-1]), a, b)
    return out.reshape(*x.shape[:-1], b.shape[-1])


def _is_lora(x: Any) -> bool:
    return isinstance(x, LoraWeights)


def merge(params: Any, lora: Any, dtype: Any = jnp.float32) -> Any:
    """Dense params with every adapted kernel replaced by dequant(W) + scale * A @ B (for export)."""
    flat = {
        qtree.path_str(p): leaf
        for p, leaf in jax.tree_util.tree_flatten_with_path(lora, is_leaf=_is_lora)[0]
    }

    def visit(path, leaf):
        p = qtree.path_str(path)
        module = p[: -len("/kernel")] if p.endswith("/kernel") else None
        if module in flat:
            ad = flat.pop(module)
            return base.dequantize(leaf, dtype) + ad.scale * (ad.a @ ad.b).astype(dtype)
        return leaf

    merged = jax.tree_util.tree_map_with_path(visit, params, is_leaf=base.is_quantized)
    if flat:
        raise ValueError(f"adapters without a base kernel: {sorted(flat)}")
    return merged


def stack(adapters: list[Any]) -> Any:
    """A bank: the adapters of several speakers stacked along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)


def take(bank: Any, index: Any) -> Any:
    """Adapters of one speaker (int index) or per-example adapters (int array [batch])."""
    return jax.tree.map(lambda x: x[index], bank)


def num_params(lora: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(lora))
