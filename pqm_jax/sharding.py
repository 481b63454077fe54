"""Device meshes and shardings, driven by config rules. Nothing else lives here.

The mesh has two axes: "data" (examples of a batch, or speakers of a bank) and "model" (the frozen
base optionally split across devices). Parameters get a `PartitionSpec` from the first rule whose
regular expression matches their path (big_vision style); a quantised tensor is split only along
its flat block axis and only where every shard holds whole blocks, so no NF4 block ever straddles
two devices. Every jit in the training code gets its `in_shardings`/`out_shardings` from here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pqm_jax.quant import base
from pqm_jax.quant import tree as qtree

DATA = "data"
MODEL = "model"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape and the base-parameter rules.

    Attributes:
      data: size of the data (and speaker) axis; -1 uses every device not taken by `model`.
      model: size of the axis the frozen base is split over (1 = replicated base).
      base_rules: (path regex, dims) pairs; dims name a mesh axis or None per array dimension.
        Only consulted when `model` > 1; () = the model family's (`Family.shard_rules`), which
        a run fills in (see `with_rules`).
    """

    data: int = -1
    model: int = 1
    base_rules: tuple[tuple[str, tuple[str | None, ...]], ...] = ()

    def __post_init__(self):
        if self.model < 1 or self.data == 0 or self.data < -1:
            raise ValueError(f"mesh sizes must be positive (data may be -1), got {self}")
        for pattern, _ in self.base_rules:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"mesh.base_rules pattern {pattern!r}: {e}") from None

    def with_rules(self, default: tuple) -> MeshConfig:
        """This config, with `default` as its base rules when it names none."""
        if self.base_rules:
            return self
        return dataclasses.replace(self, base_rules=tuple((p, tuple(d)) for p, d in default))


def make_mesh(config: MeshConfig = MeshConfig(), devices: list | None = None) -> Mesh:
    """A ("data", "model") mesh with Auto axes (jit with explicit in/out shardings).

    Raises:
      ValueError: when the requested sizes do not fit the available devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    model = config.model
    data = config.data if config.data > 0 else len(devices) // model
    if data < 1 or data * model > len(devices):
        raise ValueError(
            f"mesh data={config.data} x model={model} needs more than the {len(devices)} devices "
            "available; lower mesh.data / mesh.model"
        )
    return jax.make_mesh(
        (data, model),
        (DATA, MODEL),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices[: data * model],
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def leading(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Dimension `axis` split over "data", the rest replicated (batches, speaker banks)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA))


def tree_leading(tree: Any, mesh: Mesh, axis: int = 0) -> Any:
    """`leading(mesh, axis)` for every array leaf of `tree` (0-d leaves replicated)."""
    return jax.tree.map(
        lambda x: leading(mesh, axis) if np.ndim(x) > axis else replicated(mesh), tree
    )


def tree_replicated(tree: Any, mesh: Mesh) -> Any:
    """A replicated sharding for every leaf of `tree` (LoRA trees, optimiser state)."""
    return jax.tree.map(lambda _: replicated(mesh), tree)


def quantized_sharding(q: Any, mesh: Mesh) -> Any:
    """Shardings for the children of a quantised tensor, same pytree structure as `q`.

    A block-wise tensor is split over "model" along its flat block axis when every shard holds
    whole blocks (its element count divides by block_size x model); children whose leading size
    does not divide evenly (second-level scales, offsets) are replicated. Anything else, or a
    tensor too small to split, is replicated.
    """
    m = mesh.shape[MODEL]
    inner = q.inner if isinstance(q, qtree.Transposed) else q
    block = getattr(inner, "block_size", None)
    whole = block is not None and m > 1 and math.prod(inner.shape) % (block * m) == 0

    def child(x):
        if whole and np.ndim(x) >= 1 and x.shape[0] % m == 0:
            return NamedSharding(mesh, PartitionSpec(MODEL))
        return replicated(mesh)

    return jax.tree.map(child, q)


def _spec_for(path: str, ndim: int, rules, mesh: Mesh) -> PartitionSpec:
    for pattern, dims in rules:
        if re.search(pattern, path):
            if len(dims) != ndim:
                raise ValueError(f"sharding rule {pattern!r} has {len(dims)} dims, {path} {ndim}")
            return PartitionSpec(*dims)
    return PartitionSpec()


def base_shardings(params: Any, mesh: Mesh, config: MeshConfig = MeshConfig()) -> Any:
    """Shardings for the frozen base (plain arrays and quantised tensors), matching `params`.

    `params` may hold arrays or `jax.ShapeDtypeStruct`s. A plain array dimension named by a rule is
    split only when its size divides by the axis size; otherwise it stays whole.
    """
    if mesh.shape[MODEL] == 1:
        return jax.tree.map(lambda _: replicated(mesh), params)

    def visit(path, leaf):
        p = qtree.path_str(path)
        if base.is_quantized(leaf):
            matched = any(re.search(pattern, p) for pattern, _ in config.base_rules)
            return quantized_sharding(leaf, mesh) if matched else tree_replicated(leaf, mesh)
        spec = _spec_for(p, np.ndim(leaf), config.base_rules, mesh)
        dims = [
            d if d is None or np.shape(leaf)[i] % mesh.shape[d] == 0 else None
            for i, d in enumerate(spec)
        ]
        return NamedSharding(mesh, PartitionSpec(*dims))

    return jax.tree_util.tree_map_with_path(visit, params, is_leaf=base.is_quantized)


def put(tree: Any, shardings: Any) -> Any:
    """Host or device arrays onto `shardings` (same structure). With several processes each
    leaf must hold the same whole value on every process (numpy, or an array of this
    process's devices); each process then places only the slices its devices own."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.tree.map(_put_global, tree, shardings)


def _put_global(x: Any, s: jax.sharding.Sharding) -> Any:
    if isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct)):  # traced by an outer jit
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == s else jax.jit(lambda v: v, out_shardings=s)(x)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(x))
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(_put_global(data, s), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda index: host[index])


def globalize(args: Any, shardings: Any) -> Any:
    """Call arguments made global for a jitted function with `shardings` (several processes:
    numpy or process-local leaves become global arrays; one process: unchanged)."""
    if jax.process_count() == 1:
        return args

    def one(s, a):
        if s.is_fully_replicated:  # jit takes host and local values as replicated inputs
            return a
        return jax.tree.map(lambda x: _put_global(x, s), a)

    is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
    return jax.tree.map(one, shardings, args, is_leaf=is_sharding)


def jit(fn: Any, *, in_shardings: Any, out_shardings: Any, **kwargs: Any) -> Any:
    """`jax.jit` with explicit shardings whose calls accept host (numpy) inputs on any number
    of processes (`globalize`); on one process it is the jitted function itself."""
    compiled = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, **kwargs)
    if jax.process_count() == 1:
        return compiled

    def call(*args):
        return compiled(*globalize(args, tuple(in_shardings)))

    call.lower = compiled.lower
    return call


def global_batch(host: Any, sharding_tree: Any) -> Any:
    """Global arrays from a batch every process holds in full on the host.

    Each process copies only the slices its own devices own (`jax.make_array_from_callback`),
    so the same call works on one host and on many (every host builds the same global batch:
    batch order is a pure function of the step).
    """
    return put(host, sharding_tree)


def to_host(tree: Any) -> Any:
    """Numpy copies of whole (global) arrays on every process: `jax.device_get` on one
    process, an all-gather across processes when the arrays span several."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def abstract(tree: Any, shardings: Any) -> Any:
    """`jax.ShapeDtypeStruct`s of `tree` carrying `shardings` (restore targets for orbax)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )
