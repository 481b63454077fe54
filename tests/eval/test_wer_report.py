"""WER counts against jiwer on whole corpora, and the report files."""

from __future__ import annotations

import json

import jiwer
import pytest

from pqm_jax.eval import report, wer

REFS = ["the cat sat on the mat", "one two three", "hello world", "a b c d"]
HYPS = ["the cat sat on mat", "one two three four", "yellow world", "a b c d"]
SPK = ["s1", "s1", "s2", "s2"]


def test_counts_equal_jiwer_corpus_level():
    c = wer.score(REFS, HYPS)
    out = jiwer.process_words(REFS, HYPS)
    assert (c.substitutions, c.deletions, c.insertions) == (
        out.substitutions,
        out.deletions,
        out.insertions,
    )
    assert c.wer == pytest.approx(out.wer)


def test_per_speaker_sums_to_overall():
    overall, per = wer.score_by_speaker(REFS, HYPS, SPK)
    assert set(per) == {"s1", "s2"}
    assert per["s1"] + per["s2"] == overall
    assert per["s2"].wer == pytest.approx(1 / 6)


def test_normaliser_and_empty_sides():
    assert (
        wer.count(
            "Hello, World!",
            "hello world",
            normalize=lambda s: s.lower().replace(",", "").replace("!", ""),
        ).errors
        == 0
    )
    assert wer.count("", "uh oh").insertions == 2
    assert wer.count("two words", "").deletions == 2
    with pytest.raises(ValueError, match="hypotheses"):
        wer.score(["a"], [])


def test_relative_reduction():
    assert wer.relative_reduction(0.85, 1.0) == pytest.approx(0.15)


def test_report_files(tmp_path):
    systems = {
        "fp32": wer.score_by_speaker(REFS, HYPS, SPK),
        "nf4": wer.score_by_speaker(REFS, ["x"] * 4, SPK),
        "pqm": wer.score_by_speaker(REFS, REFS, SPK),
    }
    rep = report.build(
        systems, {"fp32": 400, "nf4": 60, "pqm": 64}, base_params=100, speaker_params=1
    )
    paths = report.write(rep, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["systems"]["pqm"]["wer"] == 0.0
    assert data["relative_wer_reduction"]["vs_fp32"] == pytest.approx(1.0)
    assert data["speaker_params_ratio"] == pytest.approx(0.01)
    assert set(data["systems"]["nf4"]["per_speaker"]) == {"s1", "s2"}
    md = paths["md"].read_text()
    assert "PQM" in md and md.splitlines()[0].startswith("| system | WER | s1 | s2 |")
    assert paths["png"].stat().st_size > 1000


def test_reduction_against_an_error_free_baseline_is_undefined(tmp_path):
    perfect = wer.score_by_speaker(REFS, REFS, SPK)
    rep = report.build(
        {"fp32": perfect, "pqm": perfect}, {"fp32": 4, "pqm": 1}, base_params=4, speaker_params=1
    )
    assert rep["relative_wer_reduction"] == {"vs_fp32": None}
    data = json.loads(report.write(rep, tmp_path)["json"].read_text())  # strict JSON: no NaN
    assert data["relative_wer_reduction"]["vs_fp32"] is None
    assert "undefined vs fp32 (no baseline error)" in report.markdown(rep)
