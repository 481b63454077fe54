"""`pqm`: the help, transcribe (a pretrained model; one speaker of a run), export, and errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from pqm_jax import api
from pqm_jax.commands import pqm
from pqm_jax.convert import peft as peft_io
from pqm_jax.run import results


def test_help_lists_every_command(capsys):
    pqm.main(["pqm", "--help"])
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in pqm.COMMANDS)


def test_unknown_command_and_bad_arguments_end_with_one_line():
    with pytest.raises(SystemExit, match="unknown command 'fly'"):
        pqm.main(["pqm", "fly"])
    with pytest.raises(SystemExit, match=r"no such audio file: /no/such\.wav"):
        pqm.main(["pqm", "transcribe", "/no/such.wav"])
    with pytest.raises(SystemExit, match="--speaker needs --run"):
        pqm.main(["pqm", "transcribe", "/no/such.wav", "--speaker", "ann"])
    with pytest.raises(SystemExit, match="holds no run"):
        pqm.main(["pqm", "export", "--run", "/no/run", "--speaker", "s", "--format", "ct2", "--out", "o"])  # fmt: skip


def test_transcribe_writes_what_the_api_transcribes(fsdd_root, tmp_path):
    clips = sorted((fsdd_root / "recordings").glob("*_jackson_1*.wav"))[:2]
    written = pqm.transcribe(
        [*map(str, clips), "--output_format", "all", "--output_dir", str(tmp_path)]
    )
    assert sorted(p.name for p in written) == sorted(
        f"{c.stem}.{fmt}" for c in clips for fmt in ("txt", "srt", "vtt", "json")
    )
    expected = api.load_model("tiny.en").transcribe_long(
        [str(c) for c in clips],
        temperatures=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),  # openai-whisper's CLI defaults
        compression_ratio_threshold=2.4,
        logprob_threshold=-1.0,
        no_speech_threshold=0.6,
    )
    for clip, want in zip(clips, expected, strict=True):
        record = json.loads((tmp_path / f"{clip.stem}.json").read_text())
        assert record["text"] == want.text and record["audio"] == str(clip)
        assert [s["text"] for s in record["segments"]] == [s.text for s in want.segments]
        assert record["segments"][0]["start"] == want.segments[0].start
        lines = "".join(s.text.strip() + "\n" for s in want.segments)
        assert (tmp_path / f"{clip.stem}.txt").read_text() == lines
        srt = (tmp_path / f"{clip.stem}.srt").read_text()
        assert srt.startswith("1\n00:00:0") and " --> " in srt and want.segments[0].text in srt
        assert (tmp_path / f"{clip.stem}.vtt").read_text().startswith("WEBVTT\n\n00:0")
    timed = pqm.transcribe([str(clips[0]), "--word_timestamps", "--output_format", "json",
                            "--output_dir", str(tmp_path / "w")])  # fmt: skip
    record = json.loads(timed[0].read_text())
    assert record["segments"][0]["words"] and "start" in record["segments"][0]["words"][0]
    short = pqm.transcribe(
        [str(clips[0]), "--without_timestamps", "--output_dir", str(tmp_path / "s")]
    )
    plain = api.load_model("tiny.en").transcribe([str(clips[0])])[0]
    assert short[0].read_text() == plain + "\n"


def test_a_speaker_of_a_run_is_transcribed_and_exported(tiny_run, fsdd_root, tmp_path):
    res = results.load(tiny_run)
    speaker = res.speakers()[0]
    clip = str(sorted((fsdd_root / "recordings").glob("*.wav"))[0])
    out = tmp_path / "out"
    pqm.main(["pqm", "transcribe", clip, "--run", str(tiny_run), "--speaker", speaker,
              "--output_format", "json", "--output_dir", str(out)])  # fmt: skip
    params, cfg = res.model()
    model = api.WhisperModel(params=params, config=cfg, tokenizer=res.tokenizer())
    lora = res.speaker_lora(speaker)
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["speaker"] == speaker
    want = model.transcribe_long(
        clip,
        adapters=lora,
        temperatures=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        compression_ratio_threshold=2.4,
        logprob_threshold=-1.0,
        no_speech_threshold=0.6,
    )[0]
    assert record["text"] == want.text
    with pytest.raises(SystemExit, match="is not in"):
        pqm.main(["pqm", "transcribe", clip, "--run", str(tiny_run), "--speaker", "nobody"])
    # the run's model reads 2 s windows: no timestamp past 2.00 s can be written
    opts, tb = model.timestamp_options(), model.tokenizer.special.timestamp_begin
    assert tb + 100 not in opts.suppress and {tb + 101, tb + 1500} <= set(opts.suppress)
    assert all(s.end <= 2.0 + 1e-6 for s in want.segments)

    folder = tmp_path / "peft"
    pqm.main(["pqm", "export", "--run", str(tiny_run), "--speaker", speaker, "--out", str(folder)])
    loaded, _ = peft_io.load(folder)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(lora), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
