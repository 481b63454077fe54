"""JSONL manifests: reading, bad records, splits given in the manifest."""

import json

import pytest

from pqm_jax.data import corpora, issues, manifest, speakers


def _write(tmp_path, rows, extra_lines=()):
    path = tmp_path / "manifest.jsonl"
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_relative_and_absolute_paths(tmp_path, tone, write_audio):
    write_audio(tmp_path / "a" / "x.wav", tone(0.5))
    absolute = write_audio(tmp_path / "y.flac", tone(2.0))
    path = _write(
        tmp_path,
        [
            {"path": "a/x.wav", "text": "first one", "speaker": "s1", "split": "train"},
            {
                "path": str(absolute),
                "text": "second",
                "speaker": 7,
                "utt_id": "u2",
                "start": 0.5,
                "end": 1.5,
            },
        ],
    )
    utts = list(manifest.read(path))
    assert [(u.utt_id, u.speaker, u.text) for u in utts] == [
        ("x", "s1", "first one"),
        ("u2", "7", "second"),
    ]
    assert utts[1].audio.shape == (16000,) and utts[0].split == "train"


def test_bad_records_are_reported_and_skipped(tmp_path, tone, write_audio):
    write_audio(tmp_path / "ok.wav", tone(0.2))
    write_audio(tmp_path / "ok2.wav", tone(0.2))
    path = _write(
        tmp_path,
        [
            {"path": "ok.wav", "text": "fine", "speaker": "s"},
            {"path": "missing.wav", "text": "no audio", "speaker": "s"},
            {"path": "ok.wav", "text": "duplicate id", "speaker": "s"},
            {"path": "ok2.wav", "speaker": "s"},
            {"text": "no path", "speaker": "s"},
            {"path": "ok2.wav", "text": "no speaker"},
        ],
        extra_lines=["{not json", "[1, 2]"],
    )
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        entries = manifest.list_entries(path, report=report)
    assert [e.utt_id for e in entries] == ["ok"]
    messages = [str(w.message) for w in caught]
    assert any("transcript without audio" in m and "missing.wav" in m for m in messages)
    assert any("duplicate id ok" in m for m in messages)
    assert any("empty transcript" in m and "manifest.jsonl:4" in m for m in messages)
    assert report.count() == 7


def test_wrong_rate_in_manifest(tmp_path, tone, write_audio):
    write_audio(tmp_path / "lo.wav", tone(0.5, rate=22050), rate=22050)
    path = _write(
        tmp_path,
        [
            {"path": "lo.wav", "text": "a", "speaker": "s"},
            {"path": "lo.wav", "text": "b", "speaker": "s", "utt_id": "lo2", "sample_rate": 22050},
        ],
    )
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match="22050 Hz, expected 16000 Hz"):
        utts = list(manifest.read(path, report=report))
    assert [u.audio.shape for u in utts] == [(8000,), (8000,)]
    assert report.count(issues.Kind.SAMPLE_RATE) == 1


def test_split_field_and_write_roundtrip(tmp_path, tone, write_audio):
    write_audio(tmp_path / "w.wav", tone(0.1))
    rows = [
        {
            "path": "w.wav",
            "text": f"t{i}",
            "speaker": f"s{i % 2}",
            "utt_id": f"u{i}",
            "split": ["adapt", "dev", "test", "valid", "train", "bogus"][i],
        }
        for i in range(6)
    ]
    manifest.write(tmp_path / "m.jsonl", rows)
    entries = manifest.list_entries(tmp_path / "m.jsonl")
    with pytest.warns(issues.InputWarning, match="split 'bogus'"):
        splits = speakers.split_from_field(entries)
    assert [e.utt_id for e in splits["s0"].adapt] == ["u0", "u4"]
    assert [e.utt_id for e in splits["s1"].dev] == ["u1", "u3"]
    assert [e.utt_id for e in splits["s0"].test] == ["u2"]
    with pytest.raises(ValueError, match="lacks"):
        manifest.write(tmp_path / "bad.jsonl", [{"path": "x"}])


def test_host_reads_only_its_speakers(tmp_path, tone, write_audio, monkeypatch):
    write_audio(tmp_path / "w.wav", tone(0.1))
    rows = [{"path": "w.wav", "text": "t", "speaker": f"s{i}", "utt_id": f"u{i}"} for i in range(4)]
    path = _write(tmp_path, rows)
    opened = []
    real = corpora.audio.load
    monkeypatch.setattr(
        corpora.audio, "load", lambda src, **kw: opened.append(src) or real(src, **kw)
    )
    utts = list(manifest.read(path, speakers={"s1", "s3"}))
    assert [u.speaker for u in utts] == ["s1", "s3"] and len(opened) == 2


def test_non_numeric_fields_rejected(tmp_path, tone, write_audio):
    write_audio(tmp_path / "w.wav", tone(0.1))
    path = _write(
        tmp_path,
        [
            {"path": "w.wav", "text": "a", "speaker": "s", "utt_id": "a", "start": "0.5"},
            {"path": "w.wav", "text": "b", "speaker": "s", "utt_id": "b", "sample_rate": "fast"},
            {"path": "w.wav", "text": "c", "speaker": "s", "utt_id": "c", "duration": 0.1},
        ],
    )
    with pytest.warns(issues.InputWarning) as caught:
        entries = manifest.list_entries(path)
    assert [e.utt_id for e in entries] == ["c"]
    messages = [str(w.message) for w in caught]
    assert "manifest.jsonl:1 (start='0.5')" in messages[0] and "sample_rate='fast'" in messages[1]
