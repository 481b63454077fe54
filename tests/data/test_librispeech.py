"""LibriSpeech layout reader, on a small tree written in tmp_path."""

import numpy as np
import pytest

from pqm_jax.data import corpora, issues, librispeech

SPEAKERS_TXT = """\
; Some comment line
;ID  |SEX| SUBSET           |MINUTES| NAME
14   | F | train-clean-360  | 25.03 | Kristin LeMoine
16   | F | train-clean-360  | 25.11 | Alys AtteWater
"""


def _tree(root, tone, write_audio, *, n=3, speakers=("14", "16")):
    for spk in speakers:
        chapter = root / spk / "200"
        lines = []
        for i in range(n):
            utt = f"{spk}-200-{i:04d}"
            write_audio(chapter / f"{utt}.flac", tone(0.5 + 0.1 * i, freq=200 + 50 * i))
            lines.append(f"{utt} HELLO NUMBER {i}")
        (chapter / f"{spk}-200.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_reads_utterances_sorted_with_audio(tmp_path, tone, write_audio):
    root = _tree(tmp_path / "train-clean-360", tone, write_audio)
    utts = list(librispeech.read(tmp_path))
    assert [u.utt_id for u in utts] == [f"{s}-200-{i:04d}" for s in ("14", "16") for i in range(3)]
    u = utts[1]
    assert u.speaker == "14" and u.text == "HELLO NUMBER 1"
    assert u.audio.dtype == np.float32 and u.sample_rate == 16000
    assert u.duration == pytest.approx(0.6) and u.audio.shape == (9600,)
    assert u.path.endswith("14-200-0001.flac")
    assert len(list(librispeech.read(root, speakers={"16"}))) == 3


def test_speakers_txt(tmp_path):
    path = tmp_path / "SPEAKERS.TXT"
    path.write_text(SPEAKERS_TXT)
    info = librispeech.read_speakers(path)
    assert set(info) == {"14", "16"}
    assert info["16"].sex == "F" and info["16"].subset == "train-clean-360"
    assert info["14"].minutes == pytest.approx(25.03) and info["14"].name == "Kristin LeMoine"


def test_transcript_line_without_audio(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio)
    (tmp_path / "14" / "200" / "14-200-0002.flac").unlink()
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match=r"transcript without audio: .*14-200\.trans\.txt"):
        entries = librispeech.list_entries(tmp_path, report=report)
    assert len(entries) == 5
    assert report.count(issues.Kind.MISSING_AUDIO) == 1


def test_audio_without_transcript(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio)
    write_audio(tmp_path / "16" / "200" / "16-200-0099.flac", tone(0.3))
    with pytest.warns(issues.InputWarning, match=r"audio without transcript: .*16-200-0099\.flac"):
        entries = librispeech.list_entries(tmp_path)
    assert "16-200-0099" not in {e.utt_id for e in entries}


def test_empty_and_non_ascii_transcripts(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio)
    trans = tmp_path / "14" / "200" / "14-200.trans.txt"
    trans.write_text("14-200-0000 HELLO\n14-200-0001\n14-200-0002 CAFÉ\n")
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        entries = {e.utt_id: e for e in librispeech.list_entries(tmp_path, report=report)}
    messages = [str(w.message) for w in caught]
    assert any("empty transcript" in m and "14-200-0001" in m for m in messages)
    assert any("non-ASCII" in m and "14-200-0002" in m and "transliterated" in m for m in messages)
    assert "14-200-0001" not in entries and entries["14-200-0002"].text == "CAFE"
    assert report.count(issues.Kind.EMPTY_TRANSCRIPT) == 1


def test_bad_audio_does_not_stop_the_rest(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio)
    (tmp_path / "14" / "200" / "14-200-0000.flac").write_bytes(b"junk")
    write_audio(tmp_path / "14" / "200" / "14-200-0001.flac", tone(0.5, rate=8000), rate=8000)
    write_audio(tmp_path / "16" / "200" / "16-200-0000.flac", tone(31.0))
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning):
        utts = list(librispeech.read(tmp_path, report=report))
    assert [u.utt_id for u in utts] == ["14-200-0001", "14-200-0002", "16-200-0001", "16-200-0002"]
    assert utts[0].audio.shape == (8000,)  # resampled 8 kHz -> 16 kHz
    assert report.count(issues.Kind.CORRUPT_AUDIO) == 1
    assert report.count(issues.Kind.SAMPLE_RATE) == 1
    assert report.count(issues.Kind.TOO_LONG) == 1
    summary = report.summary()
    assert "3 input problems" in summary and "utterance too long: skipped" in summary


def test_too_long_truncated_when_asked(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio, n=1, speakers=("14",))
    write_audio(tmp_path / "14" / "200" / "14-200-0000.flac", tone(31.0))
    options = corpora.ReadOptions(too_long="truncate")
    with pytest.warns(issues.InputWarning, match="truncated"):
        (u,) = librispeech.read(tmp_path, options=options)
    assert u.duration == 30.0


def test_strict_mode_stops_at_first_problem(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio)
    (tmp_path / "16" / "200" / "16-200-0001.flac").write_bytes(b"")
    with pytest.raises(issues.InputError, match=r"16-200-0001\.flac"):
        list(librispeech.read(tmp_path, report=issues.InputReport(strict=True)))


def test_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        librispeech.list_entries(tmp_path / "nope")


def test_invalid_utf8_transcript_is_reported_not_fatal(tmp_path, tone, write_audio):
    _tree(tmp_path, tone, write_audio, n=2, speakers=("14",))
    (tmp_path / "14" / "200" / "14-200.trans.txt").write_bytes(
        b"14-200-0000 GOOD LINE\n14-200-0001 BAD \xff\xfe BYTES\n"
    )
    with pytest.warns(issues.InputWarning, match=r"non-ASCII transcript: .*14-200-0001"):
        entries = librispeech.list_entries(tmp_path)
    assert [e.text for e in entries] == ["GOOD LINE", "BAD BYTES"]
