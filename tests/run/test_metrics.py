"""Metrics: JSON lines and a TensorBoard event file that decodes with valid CRCs."""

import json

from pqm_jax.run import metrics
from pqm_jax.run import workdir as workdir_lib


def test_crc32c_known_vector():
    assert metrics.crc32c(b"123456789") == 0xE3069283


def test_writer_round_trip(tmp_path):
    w = metrics.MetricsWriter(tmp_path)
    w.event("start")
    w.write("stage2", 1, {"loss": 2.5, "accuracy": 0.25}, epoch=0)
    w.write("stage2", 2, {"loss": float("nan"), "dev_accuracy": 0.5})
    w.close()
    rows = metrics.read_jsonl(tmp_path / workdir_lib.METRICS)
    assert rows[1]["loss"] == 2.5 and rows[1]["epoch"] == 0 and rows[2]["loss"] is None
    (event_file,) = (tmp_path / "tb").iterdir()
    events = metrics.read_events(event_file)
    assert events[0] == (1, {"stage2/loss": 2.5, "stage2/accuracy": 0.25})
    assert events[1] == (2, {"stage2/dev_accuracy": 0.5})  # NaN is not a scalar
    # A resumed run appends and counts its attempt; a torn last line is ignored.
    with open(tmp_path / workdir_lib.METRICS, "a") as f:
        f.write('{"stage": "stage2", "ste')
    w2 = metrics.MetricsWriter(tmp_path)
    w2.event("start")
    w2.close()
    assert json.loads((tmp_path / workdir_lib.METRICS).read_text().splitlines()[-1])["attempt"] == 2
    assert metrics.plot(tmp_path).is_file()
