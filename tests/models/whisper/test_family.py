"""The Whisper family: the audio window cut, and what the registry says of it."""

import jax
import pytest

from pqm_jax import models
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.testing import toy

_CONFIG = toy.tiny_config()


def test_window_cuts_positions():
    params = whisper.init(_CONFIG, key=jax.random.key(0))
    cut, cfg = whisper_family.window(params, _CONFIG, 0.1)
    assert cfg.max_source_positions == 5 and cfg.n_frames == 10
    assert cut["encoder"]["embed_positions"].shape == (5, _CONFIG.d_model)
    with pytest.raises(ValueError, match="encoder positions"):
        whisper_family.window(params, _CONFIG, 1.0)
    with pytest.raises(ValueError, match=r"multiple of 0\.02"):
        whisper_family.window(params, _CONFIG, 0.015)


def test_registry_serves_whisper_by_model_name_and_config():
    family = models.get("tiny.en")
    assert family is models.get("random") is models.get("whisper") is whisper_family.FAMILY
    assert models.of(_CONFIG) is family
    assert family.full_window_s(_CONFIG) == _CONFIG.max_source_positions / 50
    with pytest.raises(KeyError, match=r"model\.name='large' is not one of tiny\.en"):
        models.get("large")
