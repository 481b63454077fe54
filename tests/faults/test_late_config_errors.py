"""Config errors found late are named, and the corrected command runs in the same work folder."""

import pathlib

import pytest

from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny(**values):
    c = config_lib.load_file(ROOT / "configs" / "tiny_test.py")
    return config_lib.from_dict(config_lib.override(c, values))


@pytest.mark.parametrize(
    "values, error, message",
    [
        ({"lora.targets": ("no_such_module$",)}, ValueError, "no module path matches LoRA"),
        ({"data.voices": ("en-us", "xx-nowhere")}, config_lib.ConfigError, r"data\.voices: .*"),
        (
            {"data.source": "manifest", "data.root": "/nonexistent/m.jsonl"},
            config_lib.ConfigError,
            r"data\.root='/nonexistent/m\.jsonl' does not exist",
        ),
        ({"mesh.data": 64}, config_lib.ConfigError, r"needs more than the \d+ devices"),
    ],
)
def test_the_corrected_command_runs_where_the_failed_one_did(tmp_path, values, error, message):
    with pytest.raises(error, match=message):
        pipeline.run_pipeline(_tiny(**values), tmp_path, progress=False)
    # the fixed config is not refused as "another configuration": it starts training
    with pytest.raises(pipeline.SimulatedFailure):
        pipeline.run_pipeline(_tiny(**{"debug.fail_after_steps": 1}), tmp_path, progress=False)


def test_a_folder_that_trained_still_belongs_to_its_config(tmp_path):
    with pytest.raises(pipeline.SimulatedFailure):
        pipeline.run_pipeline(_tiny(**{"debug.fail_after_steps": 2}), tmp_path, progress=False)
    with pytest.raises(config_lib.ConfigError, match=r"another configuration.*lora\.rank"):
        pipeline.run_pipeline(_tiny(**{"lora.rank": 3}), tmp_path, progress=False)
