"""Damaged config files and bad regular expressions are named before any work."""

import pytest

from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline, results


def test_a_truncated_run_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"seed": 0, "mod')
    with pytest.raises(config_lib.ConfigError, match=r"config\.json is damaged .*new --workdir"):
        results.load(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"config\.json is damaged"):
        pipeline.check_workdir(config_lib.from_dict({}), tmp_path)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lora": {"targets": ["(q_proj"]}}, r"LoRA target '\(q_proj' is not a regular"),
        ({"model": {"quant_targets": ["fc[12"]}}, r"model\.quant_targets entry 'fc\[12'"),
        ({"mesh": {"base_rules": [["q_proj(", [None, "model"]]]}}, r"mesh\.base_rules pattern"),
    ],
)
def test_a_bad_regular_expression_is_a_config_error(values, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.from_dict(values)


def test_a_models_damaged_json_names_the_file_and_key(tmp_path):
    import json

    import jax

    from pqm_jax import jsonio, models
    from pqm_jax.models.conformer import family as conformer_family
    from pqm_jax.text import whisper_tokenizer

    (tmp_path / "config.json").write_text('{"suppress_ids": [1, 2')
    with pytest.raises(jsonio.DamagedFile, match=r"config\.json is damaged .*restore it"):
        whisper_tokenizer.load(tmp_path)
    (tmp_path / "config.json").write_text('{"suppress_ids": ["x"]}')
    with pytest.raises(ValueError, match=r"'suppress_ids' must be a list of token ids"):
        whisper_tokenizer.load(tmp_path)
    spec = models.ModelSpec(name="conformer", d_model=32, layers=1, heads=2, decoder_layers=1)
    family = models.get("conformer")
    params, cfg, tok = family.scratch(spec, ["ab"], key=jax.random.key(0))
    family.save(tmp_path / "m", params, cfg, tok, {})
    values = json.loads((tmp_path / "m" / "model.json").read_text())
    (tmp_path / "m" / "model.json").write_text(json.dumps(values | {"d_model": "32"}))
    with pytest.raises(jsonio.DamagedFile, match=r"model\.json: 'd_model' must be int"):
        conformer_family.load(tmp_path / "m")
