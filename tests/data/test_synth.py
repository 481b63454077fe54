"""Synthetic espeak-ng speakers: voices, sentence plans, deterministic resumable rendering."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from pqm_jax.data import corpora, issues, manifest, speakers, synth
from pqm_jax.text import transcripts as text


def test_voice_grid_and_speaker_ids():
    grid = synth.voice_grid(["en-us", "en-029"], ["", "f2"], pitches=[40, 60], rates=[175])
    assert len(grid) == 8
    assert synth.Voice("en-us+f2").speaker == "en-us+f2"
    assert synth.Voice("en-us+f2", pitch=40).speaker == "en-us+f2_p40_r175"
    assert len({v.speaker for v in grid}) == 8


def test_sample_voices_distinct_and_seeded():
    a = synth.sample_voices(2000, seed=0)
    assert len({v.speaker for v in a}) == 2000
    assert a == synth.sample_voices(2000, seed=0) and a != synth.sample_voices(2000, seed=1)
    with pytest.raises(ValueError):
        synth.sample_voices(
            10, seed=0, accents=["en"], variants=[""], pitch_range=(1, 2), rate_range=(100, 101)
        )


def test_plan_sentences_disjoint_across_voices_and_splits():
    voices = [synth.Voice(v) for v in synth.REFERENCE_VOICES]
    sentences = text.generate_sentences(400, seed=0)
    counts = {"adapt": 48, "dev": 12, "test": 30}
    jobs = synth.plan(voices, sentences, counts=counts, seed=0)
    assert len(jobs) == 360 and len({j.text for j in jobs}) == 360
    assert jobs == synth.plan(voices, sentences, counts=counts, seed=0)
    assert [j.utt_id for j in jobs[:2]] == [
        "en-gb-scotland-adapt-0000",
        "en-gb-scotland-adapt-0001",
    ]
    with pytest.raises(ValueError, match="need 360 sentences"):
        synth.plan(voices, sentences[:300], counts=counts)
    shared = synth.plan(voices, sentences[:100], counts=counts, disjoint=False)
    for v in voices:
        own = [j for j in shared if j.voice == v]
        adapt = {j.text for j in own if j.split == "adapt"}
        assert not adapt & {j.text for j in own if j.split == "test"}


def test_synthesis_is_deterministic_regardless_of_history():
    voice = synth.Voice("en-gb+m7", pitch=40, rate=160)
    first = synth.synthesize(voice, "the garden was quiet this morning")
    synth.synthesize(synth.Voice("en-us+f2"), "something else entirely")
    again = synth.synthesize(voice, "the garden was quiet this morning")
    assert first.dtype == np.float32 and 0.5 < first.shape[0] / 16000 < 5
    assert np.array_equal(first, again)
    other = synth.synthesize(
        synth.Voice("en-gb+m7", pitch=70, rate=160), "the garden was quiet this morning"
    )
    assert not np.array_equal(first[: other.shape[0]], other[: first.shape[0]])


def test_unknown_voice_raises(tmp_path):
    job = synth.Job("u", synth.Voice("xx-nope"), "hello")
    with pytest.raises(ValueError, match="no voice"):
        synth.render([job], tmp_path)


def test_render_manifest_resumable(tmp_path):
    voices = synth.voice_grid(["en-us", "en-gb-scotland"], ["", "m3"], rates=[200])
    jobs = synth.plan(
        voices,
        text.generate_sentences(8, seed=1, max_words=8),
        counts={"adapt": 1, "test": 1},
        seed=0,
    )
    path = synth.render(jobs, tmp_path / "c")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and {r["split"] for r in rows} == {"adapt", "test"}
    entries = manifest.list_entries(path)
    splits = speakers.split_from_field(entries)
    assert sorted(splits) == sorted(v.speaker for v in voices)
    utts = list(corpora.iter_utterances(entries))
    assert all(u.sample_rate == 16000 and u.duration > 0.3 for u in utts)

    wavs = sorted((tmp_path / "c" / "wav").rglob("*.wav"))
    stamps = {p: p.stat().st_mtime_ns for p in wavs}
    victim = wavs[3]
    before = victim.read_bytes()
    victim.unlink()
    os.utime(wavs[0], ns=(1, 1))
    synth.render(jobs, tmp_path / "c")
    assert victim.read_bytes() == before  # re-rendered identically
    assert wavs[0].stat().st_mtime_ns == 1  # existing files are not touched
    assert all(p.stat().st_mtime_ns == stamps[p] for p in wavs[1:3])
    assert path.read_text().count("\n") == 8


def test_empty_text_reported(tmp_path):
    jobs = [
        synth.Job("u0", synth.Voice("en-us"), "  "),
        synth.Job("u1", synth.Voice("en-us"), "hi"),
    ]
    with pytest.warns(issues.InputWarning, match="empty transcript: u0; skipped"):
        path = synth.render(jobs, tmp_path)
    assert [json.loads(line)["utt_id"] for line in path.read_text().splitlines()] == ["u1"]


def test_reference_corpus_from_dev_clean(tmp_path, dev_clean_text):
    counts = {"adapt": 2, "dev": 1, "test": 1}
    path = synth.reference_corpus(tmp_path, dev_clean_text, counts=counts)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 16
    assert {r["speaker"] for r in rows} == set(synth.REFERENCE_VOICES)
    assert len({r["text"] for r in rows}) == 16
    assert all(6 <= len(r["text"].split()) <= 30 for r in rows)


@pytest.mark.slow
def test_parallel_render_equals_serial(tmp_path):
    voices = synth.sample_voices(6, seed=2)
    jobs = synth.plan(voices, text.generate_sentences(60, seed=2), counts={"adapt": 5}, seed=0)
    a = synth.render(jobs, tmp_path / "a", workers=2)
    b = synth.render(jobs, tmp_path / "b", workers=1)
    assert a.read_text() == b.read_text()
    for p in (tmp_path / "a" / "wav").rglob("*.wav"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()
