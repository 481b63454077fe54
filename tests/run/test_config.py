"""Configs: every configs/*.py builds a valid RunConfig; bad values name their key."""

import pathlib

import pytest

from pqm_jax.run import config as config_lib

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.py"))


def _load(path):
    return config_lib.load_file(path)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_is_valid(path):
    config = config_lib.from_dict(_load(path))
    assert config_lib.from_dict(config_lib.to_dict(config)) == config  # JSON round trip


def test_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "fsdd", "librispeech", "tedlium", "whisper_base", "tiny_test"} <= names
    assert {"conformer_synth", "conformer_fsdd", "conformer_tiny_test"} <= names
    assert {"conformer_librispeech100", "conformer_librispeech960"} <= names


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stage2": {"epoch": 3}}, "unknown config key 'stage2.epoch'; did you mean 'epochs'"),
        ({"model": {"audio_window_s": "ten"}}, "model.audio_window_s must be a number"),
        ({"model": {"audio_window_s": 45.0}}, r"audio_window_s must be in \(0, 30\]"),
        ({"model": {"name": "large"}}, "model.name='large' is not one of"),
        ({"stage3": {"optim": {"schedule": "step"}}}, "stage3.optim: schedule 'step' unknown"),
        ({"stage3": {"batch_size": 6, "optim": {"accumulate": 4}}}, "not divisible"),
        ({"lora": {"rank": 0}}, "rank must be >= 1"),
        ({"data": {"voices": "en-us"}}, "data.voices must be a list"),
        ({"data": {"split": [0.5, 0.5]}}, r"data.split must have 3 entries"),
        ({"stage2": {"enabled": "yes"}}, "stage2.enabled must be true/false"),
        ({"model": {"name": "random", "path": "/x"}}, "model.path names real weights"),
        ({"model": {"name": "conformer", "ctc_weight": 1.5}}, r"ctc_weight must be in \[0, 1\]"),
        ({"data": {"text": "words"}}, "data.text='words' is not one of"),
        ({"pretrain": {"steps": 0}}, "pretrain.steps must be >= 1"),
    ],
)
def test_bad_config_names_the_key(values, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.from_dict(values)


def test_overrides_through_the_config_dict():
    c = config_lib.defaults()
    c.stage3.optim.learning_rate = 3e-4
    c.data.speakers = ("a", "b")
    config = config_lib.from_dict(c)
    assert config.stage3.optim.learning_rate == 3e-4 and config.data.speakers == ("a", "b")
    with pytest.raises(AttributeError):
        c.stage3.no_such_key = 1  # configs are locked: a typo fails where it is made
    config_lib.override(c, {"stage2.steps": 7, "model.name": "conformer"})
    config = config_lib.from_dict(c)
    assert config.stage2.steps == 7 and config.model.name == "conformer"
    with pytest.raises(KeyError, match="step"):
        config_lib.override(c, {"stage2.step": 1})
