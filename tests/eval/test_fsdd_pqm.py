"""FSDD end to end, small: real tiny.en, real speakers; PQM must beat plain NF4 on them."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from pqm_jax import resources
from pqm_jax.data import corpus as corpus_lib
from pqm_jax.data import issues
from pqm_jax.eval import run
from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fsdd_root() -> pathlib.Path:
    root = resources.shared_data_dir() / "fsdd"
    if not (root / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {root}: set PQM_SHARED_DATA to the shared/data folder")
    return root


def _config(**data):
    c = config_lib.load_file(ROOT / "configs" / "fsdd.py")
    c.data.root = os.fspath(_fsdd_root())
    for k, v in data.items():
        c.data[k] = v
    return c


def test_digit_voices_form_the_stage2_pool(tmp_path):
    c = _config(speakers=("theo",), fsdd_counts=(4, 2, 2), si_voices=2, si_counts=(2, 1))
    corpus = corpus_lib.build(config_lib.from_dict(c).data, tmp_path, report=issues.default(None))
    assert list(corpus.targets) == ["theo"]
    assert len(corpus.si_train) == 4 and len(corpus.si_dev) == 2
    fsdd_speakers = {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
    assert not {e.speaker for e in corpus.si_train} & fsdd_speakers
    digits = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    for e in corpus.si_train:
        words = e.text.split()
        assert len(words) == 4 and set(words) <= digits


@pytest.mark.slow
def test_pqm_beats_nf4_on_real_fsdd_speakers(tmp_path):
    c = _config(speakers=("nicolas", "yweweler"), fsdd_counts=(24, 4, 10), si_voices=0)
    c.stage2.enabled = False
    c.stage3.epochs = 2
    c.stage3.eval_batch_size = 4
    pipeline.run_pipeline(config_lib.from_dict(c), tmp_path, progress=False)
    rep = run.evaluate(tmp_path, run.EvalOptions(systems=("nf4", "pqm"), batch_size=10))
    nf4, pqm = rep["systems"]["nf4"]["wer"], rep["systems"]["pqm"]["wer"]
    print(json.dumps({"nf4": nf4, "pqm": pqm}))
    assert pqm < nf4
    assert rep["relative_wer_reduction"]["vs_nf4"] > 0.2
