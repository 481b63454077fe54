"""Stage 3 in bounded memory: chunks sized by a memory budget, features loaded chunk by chunk."""

import pathlib
import types

import numpy as np
import pytest

from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline, results, stages
from pqm_jax.train import adapt
from pqm_jax.train import examples as ex
from pqm_jax.train import steps as steps_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _examples(n, frames=10, lazy=False):
    rng = np.random.default_rng(n)
    mel = rng.normal(size=(n, 4, frames)).astype(np.float32)
    tok = np.zeros((n, 3), np.int32)
    kw = {"load_mel": lambda i: mel[i]} if lazy else {"mel": mel}
    return ex.Examples(tuple(map(str, range(n))), tok, tok, np.ones((n, 3), np.float32), **kw)


def test_in_memory_loads_every_mel_once():
    lazy = _examples(5, lazy=True)
    mem = lazy.in_memory()
    assert lazy.mel is None and mem.mel.shape == (5, 4, 10) and mem.load_mel is None
    np.testing.assert_array_equal(mem.take([3])["mel"], lazy.take([3])["mel"])
    assert mem.in_memory() is mem and mem.mel_bytes == lazy.mel_bytes == 5 * 4 * 10 * 4


def test_chunks_hold_what_the_budget_allows():
    data = {f"s{i}": adapt.SpeakerData(_examples(8), _examples(2)) for i in range(10)}
    lora = {"a": np.zeros((100, 1000), np.float32)}  # 400 kB: 1.6 MB a slot with its copies
    spec = config_lib.Stage3Spec(memory_budget_mb=5)
    run = types.SimpleNamespace(config=types.SimpleNamespace(stage3=spec))
    per_slot = 4 * 400_000 + 10 * 160
    assert stages.chunk_speakers(run, data, lora, working=(0, 0)) == 5 * 2**20 // per_slot == 3
    # the compiled update's working memory counts too: per slot, and once for all
    assert stages.chunk_speakers(run, data, lora, working=(2 * 2**20, 0)) == 1
    assert stages.chunk_speakers(run, data, lora, working=(0, 1_000_000)) == 2
    run.config.stage3 = config_lib.Stage3Spec(memory_budget_mb=10**6)
    assert stages.chunk_speakers(run, data, lora, working=(0, 0)) == 10  # never more than all
    run.config.stage3 = config_lib.Stage3Spec(chunk_speakers=4, memory_budget_mb=1)
    assert stages.chunk_speakers(run, data, lora) == 4  # an explicit size wins
    lazy = {s: adapt.SpeakerData(_examples(3, lazy=True), _examples(1, lazy=True)) for s in "ab"}
    mem = stages.chunk_data(lazy, ("b",))
    assert list(mem) == ["b"] and mem["b"].train.mel is not None and lazy["b"].train.mel is None


@pytest.mark.slow
def test_a_run_sizes_its_chunks_by_the_budget(tmp_path):
    c = config_lib.load_file(ROOT / "configs" / "tiny_test.py")
    values = {"mesh.data": 1, "stage3.chunk_speakers": 0, "stage3.memory_budget_mb": 0.6}
    pipeline.run_pipeline(config_lib.from_dict(config_lib.override(c, values)), tmp_path)
    manifest = results.load(tmp_path).manifest
    assert manifest["complete"] and manifest["slots"] == 1  # 0.6 MB holds one speaker
    assert len(manifest["chunks"]) == 3 and len(manifest["speakers"]) == 3


def test_stage3_reads_a_dense_copy_of_the_base_when_asked():
    import jax

    from pqm_jax import sharding
    from pqm_jax.quant import base as qbase
    from pqm_jax.quant import tree as qtree
    from pqm_jax.run import context
    from pqm_jax.testing import toy

    cfg = toy.tiny_config()
    base = toy.quantized_model(cfg, key=jax.random.key(0))
    mesh_config = sharding.MeshConfig(data=2)
    mesh = sharding.make_mesh(mesh_config)
    config = config_lib.RunConfig()

    def run_with(**stage3):
        c = config_lib.from_dict(config_lib.override(config_lib.to_dict(config), stage3))
        shardings = sharding.base_shardings(base, mesh)
        return context.Run(
            config=c,
            workdir=None,
            mesh=mesh,
            mesh_config=mesh_config,
            base=sharding.put(base, shardings),
            base_shardings=shardings,
            step_config=steps_lib.StepConfig(model=cfg),
            tokenizer=None,
            store=None,
            writer=None,
        )

    off = run_with(**{"stage3.dense_base": "off"})
    assert stages.with_stage3_base(off) is off
    on = stages.with_stage3_base(run_with(**{"stage3.dense_base": "on"}))
    leaves = jax.tree.leaves(on.base, is_leaf=qbase.is_quantized)
    assert not any(qbase.is_quantized(x) for x in leaves)
    ref = jax.jit(qtree.dequantize_tree)(base)  # eager op-by-op rounds apart (no FMA)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(on.base), jax.tree.leaves(ref), strict=True)
    )
    # auto: on when the copy fits a quarter of the budget
    tiny_budget = {"stage3.dense_base": "auto", "stage3.memory_budget_mb": 0.01}
    assert not stages.dense_base_wanted(run_with(**tiny_budget).config.stage3, base, "float32")
    assert stages.dense_base_wanted(config_lib.Stage3Spec(dense_base="auto"), base, "float32")
    with pytest.raises(ValueError, match="dense_base"):
        config_lib.Stage3Spec(dense_base="yes")
