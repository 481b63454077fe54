"""Real Whisper tiny.en (NF4) on synthetic speakers: both stages raise dev token accuracy."""

import pytest

from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline, results


@pytest.mark.slow
def test_tiny_en_adapts_synthetic_speakers(tmp_path):
    c = config_lib.defaults()
    c.model.name = "tiny.en"
    c.model.audio_window_s = 6.0
    c.model.max_tokens = 40
    c.data.voices = ("en-gb-scotland", "en-029")
    c.data.counts = (8, 4, 2)
    c.data.si_voices = 4
    c.data.si_counts = (8, 2)
    c.data.min_words = 6
    c.data.max_words = 12
    c.mesh.data = 1
    c.stage2.epochs = 1
    c.stage2.batch_size = 8
    c.stage2.eval_batch_size = 8
    c.stage2.optim.name = "adamw"
    c.stage2.optim.learning_rate = 5e-4
    c.stage3.epochs = 3
    c.stage3.batch_size = 4
    c.stage3.eval_batch_size = 4
    c.stage3.optim.learning_rate = 1e-3
    summary = pipeline.run_pipeline(config_lib.from_dict(c), tmp_path, progress=False)
    res = results.load(tmp_path)
    assert res.speakers() == ["en-029", "en-gb-scotland"]
    rows = summary["stage3"]["speakers"].values()
    assert all(r["best_dev_accuracy"] >= r["start_dev_accuracy"] for r in rows)
    assert any(r["best_dev_accuracy"] > r["start_dev_accuracy"] + 0.01 for r in rows)
    _, cfg = res.model()
    assert cfg.max_source_positions == 300 and cfg.d_model == 384
