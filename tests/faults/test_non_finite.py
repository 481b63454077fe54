"""NaN weights are refused at load naming the tensor; a diverging run stops with a clear message."""

import pathlib
import shutil

import jax
import numpy as np
import pytest

import pqm_jax
from pqm_jax import resources
from pqm_jax.models.whisper import ct2
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import tree as qtree
from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline, stages
from pqm_jax.testing import toy

CFG = toy.tiny_config(n_mels=80, vocab_size=51864, d_model=32, positions=100, max_tokens=32)


@pytest.fixture
def nan_folder(tmp_path):
    params = jax.tree.map(np.array, whisper.init(CFG, key=jax.random.key(0)))
    params["decoder"]["layers_0"]["fc1"]["kernel"][3, 5] = np.nan
    ct2.save(tmp_path / "m", params, CFG, dtype=np.float32)
    shutil.copy(resources.tiny_en_dir() / "tokenizer.json", tmp_path / "m" / "tokenizer.json")
    return tmp_path / "m"


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_nan_weights_are_named_at_load(nan_folder, tmp_path, quant):
    config = config_lib.from_dict(
        {"model": {"name": "tiny.en", "path": str(nan_folder), "quant": quant}}
    )
    with pytest.raises(qtree.NonFiniteWeights, match=r"decoder/layers_0/fc1/kernel .* 1 NaN"):
        pipeline.run_pipeline(config, tmp_path / "run", progress=False)
    with pytest.raises(qtree.NonFiniteWeights, match="fc1/kernel"):
        pqm_jax.load_model(nan_folder, quant=None if quant == "none" else quant)


def test_a_diverging_stage_stops_with_its_name(tmp_path):
    c = config_lib.load_file(pathlib.Path(__file__).parents[2] / "configs" / "tiny_test.py")
    values = {"model.quant": "none", "stage2.optim.learning_rate": 1e30, "stage2.steps": 6}
    config = config_lib.from_dict(config_lib.override(c, values))
    with pytest.raises(stages.NonFiniteLoss, match=r"stage2 step \d+: the loss is nan"):
        pipeline.run_pipeline(config, tmp_path, progress=False)
