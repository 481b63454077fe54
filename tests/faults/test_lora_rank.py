"""A LoRA rank above a layer's width is refused, naming the layer, instead of silently accepted."""

import pathlib

import jax
import pytest

from pqm_jax import lora
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline
from pqm_jax.testing import toy


def test_rank_above_the_width_names_the_layer():
    params = whisper.init(toy.tiny_config(d_model=32), key=jax.random.key(0))
    ok = lora.LoraConfig(rank=32, targets=whisper_family.LORA_TARGETS)
    assert lora.init(params, ok, key=jax.random.key(0))  # rank == width is allowed
    too_big = lora.LoraConfig(rank=33, targets=whisper_family.LORA_TARGETS)
    with pytest.raises(ValueError, match=r"rank 33 exceeds the width of .*_proj \(32 x 32\)"):
        lora.init(params, too_big, key=jax.random.key(0))


def test_a_run_stops_before_training(tmp_path):
    c = config_lib.load_file(pathlib.Path(__file__).parents[2] / "configs" / "tiny_test.py")
    config = config_lib.from_dict(config_lib.override(c, {"lora.rank": 65}))
    with pytest.raises(ValueError, match=r"lower lora\.rank"):
        pipeline.run_pipeline(config, tmp_path, progress=False)
