"""A speaker left out for too few utterances neither joins the stage-2 pool nor vanishes
silently when the user named it."""

import json

import pytest

from pqm_jax.data import corpus, issues
from pqm_jax.data import spec as data_spec
from pqm_jax.run import config as config_lib


def _manifest(tmp_path, tone, write_audio, counts):
    rows = []
    for speaker, n in counts.items():
        for i in range(n):
            write_audio(tmp_path / f"{speaker}{i}.wav", tone(0.2))
            rows.append({"path": f"{speaker}{i}.wav", "text": "one two", "speaker": speaker})
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_a_skipped_target_does_not_feed_stage_2(tmp_path, tone, write_audio):
    path = _manifest(tmp_path, tone, write_audio, {"anna": 6, "lucas": 1, "mia": 6})
    spec = data_spec.DataSpec(source="manifest", root=str(path), si_dev_utterances=0)
    with pytest.warns(issues.InputWarning, match=r"speaker lucas.*1 utterances, need"):
        c = corpus.build(spec, tmp_path / "data", report=issues.InputReport())
    assert sorted(c.targets) == ["anna", "mia"]
    assert not any(e.speaker == "lucas" for e in c.si_train + c.si_dev)


def test_a_named_target_that_drops_out_is_an_error(tmp_path, tone, write_audio):
    path = _manifest(tmp_path, tone, write_audio, {"anna": 6, "lucas": 1})
    spec = data_spec.DataSpec(source="manifest", root=str(path), speakers=("anna", "lucas"))
    with pytest.warns(issues.InputWarning, match="speaker lucas"):
        with pytest.raises(config_lib.ConfigError, match=r"data\.speakers names lucas"):
            corpus.build(spec, tmp_path / "data", report=issues.InputReport())
