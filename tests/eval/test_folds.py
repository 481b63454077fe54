"""Merging fold reports: counts summed per speaker, a speaker in two folds refused."""

import json
import pathlib
import subprocess
import sys

import pytest

from pqm_jax.eval import folds, report, wer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _report(per: dict[str, tuple[int, int, int, int]]) -> dict:
    systems = {}
    for system, bump in (("fp32", 0), ("pqm", -1)):
        counts = {
            s: wer.WerCounts(max(a + bump, 0), b, c, n, 10) for s, (a, b, c, n) in per.items()
        }
        systems[system] = (sum(counts.values(), wer.WerCounts()), counts)
    sizes = {"fp32": 1000, "pqm": 200}
    return json.loads(json.dumps(report.build(systems, sizes, base_params=50, speaker_params=5)))


def test_counts_are_summed_not_wers_averaged():
    a = _report({"ann": (3, 1, 0, 40)})
    b = _report({"bob": (10, 0, 2, 120), "cat": (0, 0, 0, 40)})
    merged = folds.merge([a, b], names=["f1", "f2"])
    fp32 = merged["systems"]["fp32"]
    assert fp32["counts"]["substitutions"] == 13 and fp32["counts"]["ref_words"] == 200
    assert fp32["wer"] == pytest.approx(16 / 200)  # not the mean of 4/40 and 12/160
    assert list(fp32["per_speaker"]) == ["ann", "bob", "cat"]
    assert fp32["per_speaker"]["bob"] == pytest.approx(12 / 120)
    pqm = merged["systems"]["pqm"]["wer"]
    assert merged["relative_wer_reduction"]["vs_fp32"] == pytest.approx(
        (16 / 200 - pqm) / (16 / 200)
    )
    assert [f["speakers"] for f in merged["folds"]] == [["ann"], ["bob", "cat"]]


def test_the_step_table_lists_each_speaker_with_sdi():
    merged = folds.merge([_report({"ann": (3, 1, 0, 40)})], names=["f1"])
    table = folds.step_table(merged, before="fp32", after="pqm")
    assert "| ann | 10.0% | 3/1/0 | 7.5% | 2/1/0 | 25.0% fewer errors |" in table
    with pytest.raises(KeyError, match="lacks"):
        folds.step_table(merged, before="nf4_si")


def test_a_speaker_in_two_folds_is_refused():
    a, b = _report({"ann": (1, 0, 0, 4)}), _report({"ann": (1, 0, 0, 4)})
    with pytest.raises(ValueError, match="ann is a target of both f1 and f2"):
        folds.merge([a, b], names=["f1", "f2"])


def test_folds_of_different_models_are_refused():
    a, b = _report({"ann": (1, 0, 0, 4)}), _report({"bob": (1, 0, 0, 4)})
    b["base_params"] = 99
    with pytest.raises(ValueError, match="different models"):
        folds.merge([a, b], names=["f1", "f2"])


def test_the_script_writes_json_table_and_plot(tmp_path):
    runs = []
    for name, per in (("f1", {"ann": (1, 0, 0, 8)}), ("f2", {"bob": (2, 1, 0, 8)})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(_report(per)))
        runs.append(str(tmp_path / name))
    out = tmp_path / "res" / "merged.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "merge_folds.py"), *runs, "--out", str(out)]
    done = subprocess.run([*cmd, "--command", "python train.py x"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    merged = json.loads(out.read_text())
    assert merged["commands"] == ["python train.py x"]
    assert merged["systems"]["fp32"]["counts"]["ref_words"] == 16
    assert out.with_suffix(".png").stat().st_size > 0 and "| ann | bob" in done.stdout.replace(
        "WER | ", "| "
    )
    missing = subprocess.run([*cmd[:2], str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode != 0
