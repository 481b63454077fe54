"""TED-LIUM 3 reader on NIST SPHERE talks written in tmp_path."""

import numpy as np
import pytest
import soundfile

from pqm_jax.data import issues, tedlium

STM = """\
;; comment
TalkA 1 TalkA 0.00 1.00 <o,f0,male> hello world
TalkA 1 TalkA 1.00 2.00 <o,f0,male> ignore_time_segment_in_scoring
TalkA 1 TalkA 2.00 3.50 <o,f0,male> it 's a <unk> test
"""


TEMPLATE = STM.replace("TalkA", "{}")


def _talk(root, name, seconds, write_audio, stm=TEMPLATE):
    t = np.arange(round(seconds * 16000)) / 16000
    # the amplitude encodes the time, so a cut segment tells where it came from
    samples = (0.01 * t).astype(np.float32)
    write_audio(root / "sph" / f"{name}.sph", samples, format="NIST", subtype="PCM_16")
    (root / "stm").mkdir(parents=True, exist_ok=True)
    (root / "stm" / f"{name}.stm").write_text(stm.format(name, name, name, name, name, name))


def test_nist_sphere_is_writable():
    assert "NIST" in soundfile.available_formats()


def test_segments_cut_from_talks(tmp_path, write_audio):
    _talk(tmp_path, "TalkA", 4.0, write_audio)
    utts = list(tedlium.read(tmp_path))
    assert [u.utt_id for u in utts] == ["TalkA-0000000-0000100", "TalkA-0000200-0000350"]
    assert [u.text for u in utts] == ["hello world", "it's a test"]
    assert all(u.speaker == "TalkA" for u in utts)
    second = utts[1]
    assert second.audio.shape == (24000,) and second.duration == pytest.approx(1.5)
    assert second.audio[0] == pytest.approx(0.02, abs=1e-3)  # starts at t = 2.0 s


def test_raw_text_kept_when_asked(tmp_path, write_audio):
    _talk(tmp_path, "TalkA", 4.0, write_audio)
    entries = tedlium.list_entries(tmp_path, normalise_text=False)
    assert entries[1].text == "it 's a <unk> test"
    assert entries[1].duration == pytest.approx(1.5)


def test_missing_sph_and_missing_stm(tmp_path, write_audio):
    _talk(tmp_path, "TalkA", 4.0, write_audio)
    (tmp_path / "stm" / "TalkB.stm").write_text(STM.replace("TalkA", "TalkB"))
    write_audio(tmp_path / "sph" / "TalkC.sph", np.zeros(1600, np.float32), format="NIST")
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        entries = tedlium.list_entries(tmp_path, report=report)
    messages = " | ".join(str(w.message) for w in caught)
    assert "transcript without audio" in messages and "TalkB.stm" in messages
    assert "audio without transcript" in messages and "TalkC.sph" in messages
    assert {e.speaker for e in entries} == {"TalkA"}
    assert report.count() == 2


def test_malformed_lines_reported(tmp_path, write_audio):
    stm = "{} 1 {} 0.0 1.0 <o> fine\n{} 1 {} x y <o> broken\n{} 1 {} 2.0 1.0 <o> backwards\n"
    _talk(tmp_path, "TalkA", 3.0, write_audio, stm=stm)
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match="malformed record"):
        entries = tedlium.list_entries(tmp_path, report=report)
    assert len(entries) == 1 and report.count(issues.Kind.BAD_RECORD) == 2


def test_corrupt_talk_reported_once(tmp_path, write_audio):
    _talk(tmp_path, "TalkA", 4.0, write_audio)
    (tmp_path / "sph" / "TalkA.sph").write_bytes(b"NIST_1A\n   1024\nend_head\n")
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match="TalkA.sph"):
        assert list(tedlium.read(tmp_path, report=report)) == []
    assert report.count(issues.Kind.CORRUPT_AUDIO) == 1


def test_normalise():
    assert tedlium.normalise("we 're <unk> here 's") == "we're here's"


def test_release_layout_pairs_stm_with_its_own_sph(tmp_path, write_audio):
    """TED-LIUM 3 keeps the same talks under data/ and legacy/: each stm uses its sibling sph,
    and a segment listed twice is reported once and kept once."""
    _talk(tmp_path / "data", "TalkA", 4.0, write_audio)
    _talk(tmp_path / "legacy" / "test", "TalkA", 4.0, write_audio)
    entries = tedlium.list_entries(tmp_path / "legacy" / "test")
    assert all("legacy" in e.path for e in entries) and len(entries) == 2
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        both = tedlium.list_entries(tmp_path, report=report)
    assert len(both) == 2 and report.count(issues.Kind.BAD_RECORD) == 2
    assert "duplicate segment TalkA-0000000-0000100" in str(caught[0].message)
