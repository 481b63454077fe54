"""Mesh construction and rule-driven shardings (NF4 blocks never split)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pqm_jax import sharding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.quant import tree as qtree
from pqm_jax.testing import toy


def test_mesh_shapes_and_errors():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, model=2))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs more than"):
        sharding.make_mesh(sharding.MeshConfig(data=8, model=2))
    with pytest.raises(ValueError, match="positive"):
        sharding.MeshConfig(model=0)


def test_quantized_tensors_split_on_whole_blocks_only():
    mesh_config = sharding.MeshConfig(data=2, model=4, base_rules=whisper_family.SHARD_RULES)
    mesh = sharding.make_mesh(mesh_config)
    params = {
        "a": {"q_proj": {"kernel": np.ones((64, 64), np.float32)}},  # 64 blocks: splits
        "b": {"q_proj": {"kernel": np.ones((8, 24), np.float32)}},  # 3 blocks: replicated
        "c": {"fc1": {"kernel": np.ones((6, 64), np.float32)}},  # plain, 64 % 4 == 0
        "d": {"fc1": {"kernel": np.ones((6, 6), np.float32)}},  # plain, 6 % 4 != 0
    }
    q = qtree.quantize_tree(
        {k: v for k, v in params.items() if k in "ab"},
        qtree.match_any(["kernel"]),
        "nf4",
        double_quant=True,
    )
    s = sharding.base_shardings({**params, **q}, mesh, mesh_config)
    a = s["a"]["q_proj"]["kernel"].inner
    assert a.codes.spec == P("model") and a.absmax.spec == P("model")
    assert a.absmax_offset.spec == P()  # a scalar
    assert s["b"]["q_proj"]["kernel"].inner.codes.spec == P()
    assert s["c"]["fc1"]["kernel"].spec == P(None, "model")
    assert s["d"]["fc1"]["kernel"].spec == P(None, None)
    placed = sharding.put(
        q["a"], jax.tree.map(lambda x: x, {"q_proj": {"kernel": None}}) and s["a"]
    )
    codes = placed["q_proj"]["kernel"].inner.codes
    per_shard = codes.addressable_shards[0].data.shape[0] * 2  # two 4-bit codes a byte
    assert per_shard % 64 == 0  # whole blocks on every device


def test_model_axis_of_one_replicates_everything():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=8))
    base = toy.quantized_model(
        toy.tiny_config(d_model=32, vocab_size=64, positions=8),
        key=jax.random.key(0),
        targets=(r"fc\d/kernel$",),
    )
    specs = {x.spec for x in jax.tree.leaves(sharding.base_shardings(base, mesh))}
    assert specs == {P()}
    batch = {"mel": np.zeros((8, 3)), "n": np.zeros(())}
    s = sharding.tree_leading(batch, mesh)
    assert s["mel"].spec == P("data") and s["n"].spec == P()
