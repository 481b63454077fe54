"""The whole pipeline on the tiny config: interrupted runs resume to bit-identical adapters."""

import json
import pathlib

import jax
import numpy as np
import pytest

from pqm_jax import checkpoint
from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline, results
from pqm_jax.run import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny(**overrides):
    c = config_lib.load_file(ROOT / "configs" / "tiny_test.py")
    c.stage2.ckpt_every = 2
    c.stage3.ckpt_every = 2
    return config_lib.from_dict(config_lib.override(c, overrides))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    summary = pipeline.run_pipeline(tiny(), workdir, progress=False)
    return workdir, summary


def test_uninterrupted_run_writes_every_result(reference):
    workdir, summary = reference
    res = results.load(workdir)
    names = res.speakers()
    assert names == ["en-029", "en-gb-scotland", "en-us"]
    assert summary["stage3"]["complete"]
    assert summary["stage2"]["trained"] and summary["stage2"]["steps"] == 3
    for s in names:
        row = res.manifest["speakers"][s]
        assert row["best_dev_accuracy"] >= row["start_dev_accuracy"]
    bank, order = res.bank()
    one = res.speaker_lora(names[1])
    _assert_same(jax.tree.map(lambda x: x[1], bank), one)
    assert order == names
    base, cfg = res.model()
    assert cfg.max_source_positions == 100  # 2 s window
    assert base["encoder"]["embed_positions"].shape[0] == 100
    assert res.si_info()["steps"] == 3
    assert not (workdir / "ckpt" / "stage2").exists()  # rolling checkpoints cleared
    corpus = res.corpus()
    assert sorted(corpus.targets) == names
    assert res.feature_store().get(corpus.targets["en-us"].test[0]).shape == (80, 200)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "stage2" and "loss" in r for r in rows)
    assert any(r.get("stage", "").startswith("stage3/") and "dev_accuracy" in r for r in rows)
    assert (workdir / "metrics.png").is_file() and list((workdir / "tb").iterdir())


def _attempt(config, workdir) -> bool:
    try:
        pipeline.run_pipeline(config, workdir, progress=False)
    except pipeline.SimulatedFailure:
        return False
    return True


def test_killed_runs_resume_to_identical_adapters(reference, tmp_path):
    ref_dir, _ = reference
    config = tiny(**{"debug.fail_after_steps": 3})
    attempts, corrupted, done = 0, False, False
    while not done:
        attempts += 1
        assert attempts < 20
        if corrupted == "pending":
            with pytest.warns(checkpoint.CheckpointWarning, match="skipping damaged"):
                done = _attempt(config, tmp_path)
            corrupted = True
        else:
            done = _attempt(config, tmp_path)
        series = checkpoint.Series(tmp_path / "ckpt" / "stage3")
        if not done and not corrupted and len(series.steps()) == 2:
            # A torn newest checkpoint: the run must fall back to the one before.
            newest = series.path(series.steps()[-1])
            files = [p for p in newest.rglob("*") if p.is_file()]
            victim = max(files, key=lambda p: p.stat().st_size)
            victim.write_bytes(victim.read_bytes()[:-7])
            corrupted = "pending"
    assert attempts > 3 and corrupted is True
    ref, got = results.load(ref_dir), results.load(tmp_path)
    _assert_same(ref.si_lora(), got.si_lora())
    assert got.speakers() == ref.speakers()
    for s in ref.speakers():
        _assert_same(ref.speaker_lora(s), got.speaker_lora(s))
        assert got.manifest["speakers"][s] == ref.manifest["speakers"][s]
    attempts_logged = {
        json.loads(line).get("attempt")
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    }
    assert max(attempts_logged) == attempts


def test_a_workdir_refuses_another_config(reference):
    workdir, _ = reference
    with pytest.raises(config_lib.ConfigError, match=r"another configuration.*lora\.rank"):
        pipeline.setup(tiny(**{"lora.rank": 3}), workdir, progress=False)
    # Debug hooks may differ between attempts.
    pipeline.check_workdir(tiny(**{"debug.fail_after_steps": 5}), workdir)


def test_finished_stages_are_not_redone(reference):
    workdir, summary = reference
    before = workdir_lib.Workdir(workdir).manifest.read_text()
    again = pipeline.run_pipeline(tiny(), workdir, progress=False)
    assert again["stage3"]["speakers"] == summary["stage3"]["speakers"]
    assert workdir_lib.Workdir(workdir).manifest.read_text() == before
