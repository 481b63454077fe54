"""A run killed in stage 3 is not scored as if it were complete: named, non-zero, or --partial."""

import pathlib
import subprocess
import sys

import pytest

from pqm_jax.eval import report as report_lib
from pqm_jax.eval import run as eval_run
from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline, results

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny_test.py"


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """tiny_test (3 voices, chunks of 2) killed inside its second stage-3 chunk."""
    workdir = tmp_path_factory.mktemp("killed")
    c = config_lib.load_file(TINY)
    config_lib.override(c, {"debug.fail_after_steps": 11})
    with pytest.raises(pipeline.SimulatedFailure):
        pipeline.run_pipeline(config_lib.from_dict(c), workdir, progress=False)
    res = results.load(workdir)
    assert len(res.speakers()) == 2 and not res.manifest["complete"]
    return workdir


def test_scoring_an_unfinished_run_names_what_is_missing(killed):
    with pytest.raises(
        eval_run.IncompleteRunError, match=r"1 speakers not adapted: en-us.*--partial"
    ):
        eval_run.evaluate(killed)


def test_a_partial_report_says_it_is_partial(killed):
    options = eval_run.EvalOptions(systems=("nf4", "pqm"), partial=True, max_new_tokens=2)
    rep = eval_run.evaluate(killed, options)
    assert rep["partial"] == {"stage2": True, "missing_speakers": ["en-us"]}
    assert "PARTIAL REPORT" in report_lib.markdown(rep) and "en-us" in report_lib.markdown(rep)


def test_the_cli_exits_non_zero_and_checks_its_flags(killed):
    def run(*flags):
        cmd = [sys.executable, str(ROOT / "evaluate.py"), f"--workdir={killed}", *flags]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)

    out = run()
    assert out.returncode != 0 and "the run is incomplete" in out.stderr
    out = run("--batch_size=0")
    assert out.returncode != 0 and "batch_size must be >= 1" in out.stderr
