"""FSDD: the reference protocol on the real recordings, and bad input on a small copy."""

import collections
import re

import numpy as np
import pytest

from pqm_jax.data import corpora, fsdd, issues, speakers

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


def _takes(entries):
    return {int(re.search(r"_(\d+)\.wav$", s.path)[1]) for e in entries for s in e.segments}


def test_reference_split_matches_the_reference_setup(fsdd_root):
    splits = fsdd.reference_split(fsdd_root)
    assert list(splits) == SPEAKERS
    for speaker, split in splits.items():
        assert (len(split.adapt), len(split.dev), len(split.test)) == (80, 20, 50)
        for e in (*split.adapt, *split.dev, *split.test):
            assert e.speaker == speaker and len(e.segments) == 4
            assert all(f"_{speaker}_" in s.path for s in e.segments)
            assert len(e.text.split()) == 4 and e.text == e.text.lower()
        assert _takes(split.adapt + split.dev) <= set(range(5, 50))
        assert _takes(split.test) <= set(range(5))
        train_files = {s.path for e in split.adapt for s in e.segments}
        dev_files = {s.path for e in split.dev for s in e.segments}
        assert len(train_files) == 320 and not train_files & dev_files
        uses = collections.Counter(s.path for e in split.test for s in e.segments)
        assert len(uses) == 50 and set(uses.values()) == {4}  # each test take used 4 times


def test_reference_split_is_deterministic(fsdd_root):
    a = fsdd.reference_split(fsdd_root)
    assert a == fsdd.reference_split(fsdd_root)
    other = fsdd.reference_split(fsdd_root, protocol=fsdd.Protocol(seed=1))
    assert a["theo"].adapt != other["theo"].adapt


def test_joined_audio_at_16k_with_gaps_and_no_warnings(fsdd_root):
    split = fsdd.reference_split(fsdd_root)["lucas"]
    entry = split.test[0]
    (utt,) = corpora.iter_utterances([entry])  # 8 kHz is expected for FSDD: no warning
    parts = [
        corpora.load_entry(corpora.Entry("p", "lucas", "x", (s,), expected_rate=8000))
        for s in entry.segments
    ]
    assert utt.sample_rate == 16000 and utt.audio.dtype == np.float32
    assert utt.audio.shape[0] == sum(p.audio.shape[0] for p in parts) + 3 * 2400
    assert utt.text == entry.text and utt.utt_id == "lucas-test-000"


def test_default_root_uses_env(monkeypatch, shared_data):
    monkeypatch.setenv("PQM_SHARED_DATA", str(shared_data))
    assert fsdd.default_root() == shared_data / "fsdd"


def test_si_control_pool_excludes_the_held_out_speaker(fsdd_root):
    splits = fsdd.reference_split(fsdd_root)
    pool = speakers.pool_parts(splits, "adapt", exclude=["nicolas"])
    assert len(pool) == 5 * 80
    speakers.check_disjoint(pool, ["nicolas"])
    assert "nicolas" not in {e.speaker for e in pool}


def test_single_digit_entries(tmp_path, tone, write_audio):
    for d in range(3):
        write_audio(tmp_path / "recordings" / f"{d}_ann_0.wav", tone(0.3, rate=8000), rate=8000)
    entries = fsdd.single(fsdd.list_recordings(tmp_path))
    assert [(e.utt_id, e.text) for e in entries] == [
        ("0_ann_0", "zero"),
        ("1_ann_0", "one"),
        ("2_ann_0", "two"),
    ]
    utts = list(corpora.iter_utterances(entries))
    assert utts[0].audio.shape == (4800,)


def test_bad_name_and_too_few_recordings(tmp_path, tone, write_audio):
    rec = tmp_path / "recordings"
    for take in (0, 1, 5, 6, 7, 8):
        write_audio(rec / f"3_bob_{take}.wav", tone(0.2, rate=8000), rate=8000)
    write_audio(rec / "notes.wav", tone(0.2, rate=8000), rate=8000)
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        assert fsdd.reference_split(tmp_path, report=report) == {}
    messages = " | ".join(str(w.message) for w in caught)
    assert "audio without transcript" in messages and "notes.wav" in messages
    assert "too few utterances for a split: FSDD speaker bob" in messages
    assert report.count(issues.Kind.FEW_UTTERANCES) == 1
