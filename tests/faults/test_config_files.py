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
