"""`model.path` for Whisper: a user's own CTranslate2 or Hugging Face folder, or a named error."""

import shutil

import jax
import numpy as np
import pytest

from pqm_jax import resources
from pqm_jax.models.whisper import ct2, hf
from pqm_jax.models.whisper import model as whisper
from pqm_jax.run import backbone, pipeline, workdir
from pqm_jax.run import config as config_lib
from pqm_jax.testing import toy

CFG = toy.tiny_config(n_mels=80, vocab_size=51864, d_model=32, positions=100, max_tokens=32)


def _folder(tmp_path, kind):
    params = jax.tree.map(np.asarray, whisper.init(CFG, key=jax.random.key(0)))
    out = tmp_path / kind
    if kind == "ct2":
        ct2.save(out, params, CFG, dtype=np.float32)
    else:
        hf.save(out, params, CFG)
    shutil.copy(resources.tiny_en_dir() / "tokenizer.json", out / "tokenizer.json")
    return out, params


@pytest.mark.parametrize("kind", ["ct2", "hf"])
def test_a_whisper_run_reads_the_users_folder(tmp_path, kind):
    folder, params = _folder(tmp_path, kind)
    config = config_lib.from_dict(
        {"model": {"name": "tiny.en", "path": str(folder), "audio_window_s": 2.0}}
    )
    got, cfg, tok = backbone.load(config, workdir.Workdir(tmp_path / "run"))
    assert cfg == CFG and tok.special.eot == 50256
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), y)


def test_a_folder_that_is_no_model_is_refused_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    config = config_lib.from_dict({"model": {"name": "tiny.en", "path": str(tmp_path / "empty")}})
    with pytest.raises(config_lib.ConfigError, match=r"model\.path=.*not a Whisper folder"):
        pipeline.run_pipeline(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_random_weights_take_no_path(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="not 'random'"):
        config_lib.from_dict({"model": {"name": "random", "path": str(tmp_path)}})
