"""evaluate.py on a tiny trained run: the report, and mixed-speaker batches equal per-speaker ones."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from pqm_jax import lora as lora_lib
from pqm_jax.data import issues
from pqm_jax.eval import run
from pqm_jax.models.whisper import decoding
from pqm_jax.run import bank as bank_lib
from pqm_jax.run import results

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """A copy of the session's finished tiny run (the evaluation writes its reports there)."""
    workdir = tmp_path_factory.mktemp("eval_run") / "run"
    shutil.copytree(tiny_run, workdir)
    return workdir


def test_report_has_every_system_and_field(trained):
    rep = run.evaluate(trained, run.EvalOptions(batch_size=4))
    data = json.loads((trained / "report.json").read_text())
    assert data == json.loads(json.dumps(rep))
    speakers = results.load(trained).speakers()
    for s in ("fp32", "nf4", "nf4_si", "pqm"):
        row = data["systems"][s]
        assert set(row["per_speaker"]) == set(speakers)
        assert row["wer"] >= 0 and row["size_bytes"] > 0
        c = row["counts"]
        errors = c["substitutions"] + c["deletions"] + c["insertions"]
        assert row["wer"] == pytest.approx(errors / c["ref_words"])
    sizes = {s: data["systems"][s]["size_bytes"] for s in data["systems"]}
    assert sizes["fp32"] > 3 * sizes["nf4"]  # 1-layer toy: LayerNorms/positions stay fp32
    assert sizes["nf4"] < sizes["pqm"] < sizes["fp32"]
    assert 0 < data["speaker_params_ratio"] < 0.05
    assert set(data["relative_wer_reduction"]) >= {"vs_fp32", "vs_nf4"}
    assert (trained / "report.md").read_text().startswith("| system | WER |")
    assert (trained / "report.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (trained / "transcripts.jsonl").read_text().splitlines()]
    assert len(rows) == data["test_utterances"] and {"pqm", "ref", "speaker"} <= set(rows[0])


def test_mixed_speaker_batches_equal_each_speaker_alone(trained):
    res = results.load(trained)
    bank, names = res.bank()
    bank = jax.tree.map(lambda x: x * 5.0, bank)  # make speakers differ visibly
    data = run.test_set(res, names, issues.default(None))
    base, cfg = res.model()
    tok = res.tokenizer()
    opts = decoding.DecodeOptions(prompt=tuple(tok.prompt()), eot=tok.special.eot, max_new_tokens=8)
    # interleave speakers so every batch mixes them
    order = np.argsort(np.arange(len(data.speakers)) % 3, kind="stable")
    mixed = run.decode_all(
        base,
        data.mel[order],
        config=cfg,
        options=opts,
        tokenizer=tok,
        bank=bank_lib.StackedBank(bank, names),
        speakers=[data.speakers[o] for o in order],
        batch_size=4,
    )
    for k, name in enumerate(names):
        idx = [i for i, o in enumerate(order) if data.speakers[o] == name]
        alone = run.decode_all(
            base,
            data.mel[order][idx],
            config=cfg,
            options=opts,
            tokenizer=tok,
            lora=lora_lib.take(bank, k),
            batch_size=4,
        )
        assert [mixed[i] for i in idx] == alone


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0
    assert "holds no run" in out.stderr and "Traceback" not in out.stderr


def test_unknown_system_and_speaker_are_refused(trained):
    with pytest.raises(ValueError, match="unknown systems"):
        run.EvalOptions(systems=("fp16",))
    with pytest.raises(KeyError, match="no adapters"):
        run.evaluate(trained, run.EvalOptions(speakers=("nobody",)))
