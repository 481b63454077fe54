"""Speaker splits: sizes, determinism, and no leakage of held-out speakers."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqm_jax.data import issues, librispeech, speakers


@dataclasses.dataclass(frozen=True)
class Item:
    utt_id: str
    speaker: str
    path: str = ""
    split: str | None = None


def _items(counts):
    return [Item(f"{s}-{i:04d}", s) for s, n in counts.items() for i in range(n)]


@given(st.integers(min_value=3, max_value=500))
def test_split_counts_cover_everything(n):
    a, d, t = speakers.split_counts(n)
    assert a + d + t == n and min(a, d, t) >= 1
    assert abs(a - 0.4 * n) <= 1.5 and abs(d - 0.2 * n) <= 1.5


def test_contiguous_split_by_utterance_id():
    items = _items({"s": 10})[::-1]  # order of input must not matter
    split = speakers.split_speaker(items)
    assert [x.utt_id[-2:] for x in split.adapt] == ["00", "01", "02", "03"]
    assert [x.utt_id[-2:] for x in split.dev] == ["04", "05"]
    assert [x.utt_id[-2:] for x in split.test] == ["06", "07", "08", "09"]


def test_shuffled_split_is_seeded_and_disjoint():
    items = _items({"s": 50})
    cfg = speakers.SplitConfig(order="shuffle", seed=3)
    a, b = speakers.split_speaker(items, cfg), speakers.split_speaker(items[::-1], cfg)
    assert a == b
    assert a != speakers.split_speaker(items, dataclasses.replace(cfg, seed=4))
    parts = [set(a.adapt), set(a.dev), set(a.test)]
    assert sum(map(len, parts)) == 50 and len(set.union(*parts)) == 50
    assert (len(a.adapt), len(a.dev), len(a.test)) == (20, 10, 20)
    with pytest.raises(ValueError, match="unknown split order"):
        speakers.split_speaker(items, speakers.SplitConfig(order="random"))


def test_speaker_with_too_few_utterances_is_reported():
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match=r"too few utterances for a split: speaker b \(2"):
        splits = speakers.split_by_speaker(_items({"a": 10, "b": 2}), report=report)
    assert list(splits) == ["a"] and report.count(issues.Kind.FEW_UTTERANCES) == 1
    with pytest.raises(issues.InputError):
        speakers.split_by_speaker(_items({"b": 2}), report=issues.InputReport(strict=True))


def test_choose_speakers_disjoint_and_deterministic():
    ids = [str(i) for i in range(30)]
    si, held = speakers.choose_speakers(ids, n_held_out=10, seed=0)
    assert len(held) == 10 and not set(si) & set(held) and sorted(si + held) == sorted(ids)
    assert (si, held) == speakers.choose_speakers(reversed(ids), n_held_out=10, seed=0)
    with pytest.raises(ValueError):
        speakers.choose_speakers(ids, n_held_out=31)


def test_leak_is_detected():
    with pytest.raises(speakers.SpeakerLeakError, match="'b'"):
        speakers.check_disjoint(_items({"a": 2, "b": 1}), ["b", "c"])
    speakers.check_disjoint(["a"], _items({"b": 1}))


def test_held_out_speakers_never_reach_training(tmp_path, tone, write_audio):
    """End to end on a LibriSpeech tree: the SI training set, built from every speaker not held
    out, contains no utterance of a test speaker, in any split."""
    spk_ids = [str(100 + i) for i in range(8)]
    for s in spk_ids:
        lines = []
        for i in range(5):
            utt = f"{s}-1-{i:04d}"
            write_audio(tmp_path / s / "1" / f"{utt}.flac", tone(0.05))
            lines.append(f"{utt} WORD {i}")
        (tmp_path / s / "1" / f"{s}-1.trans.txt").write_text("\n".join(lines))
    entries = librispeech.list_entries(tmp_path)
    si_ids, test_ids = speakers.choose_speakers({e.speaker for e in entries}, n_held_out=3)
    si_train = speakers.speaker_independent(entries, held_out=test_ids)
    test_splits = speakers.split_by_speaker(e for e in entries if e.speaker in test_ids)
    assert {e.speaker for e in si_train} == set(si_ids)
    test_utts = {
        x.utt_id for sp in test_splits.values() for p in speakers.PARTS for x in sp.part(p)
    }
    assert not test_utts & {e.utt_id for e in si_train}
    assert len(test_utts) == 15
