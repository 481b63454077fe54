"""Leave-speakers-out FSDD (configs/conformer_fsdd_loso.py): no target is heard before stage 3."""

import dataclasses
import pathlib

import pytest

from pqm_jax.data import corpus, fsdd, issues
from pqm_jax.run import config as config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _fold(fold: int, **data):
    d = config_lib.load_file(CONFIGS / f"conformer_fsdd_fold{fold + 1}.py")
    values = d.to_dict()
    values["data"].update(si_voices=0, **data)  # the real part of the pool (no espeak here)
    return config_lib.from_dict(values).data


def _files(entries):
    return {s.path for e in entries for s in e.segments}


def test_folds_make_every_speaker_a_target_exactly_once(fsdd_root):
    loso = config_lib.load_module(CONFIGS / "conformer_fsdd_loso.py")
    targets = [t for fold in loso.FOLDS for t in fold]
    assert sorted(targets) == sorted(loso.SPEAKERS) == sorted(fsdd.reference_split(fsdd_root))


@pytest.mark.parametrize("fold", [0, 1])
def test_no_target_audio_or_speaker_is_in_the_pool(fold, fsdd_root, tmp_path):
    spec = _fold(fold, root=str(fsdd_root))
    built = corpus.build(spec, tmp_path, report=issues.InputReport())
    assert sorted(built.targets) == sorted(spec.speakers)
    pool = (*built.si_train, *built.si_dev)
    assert {e.speaker for e in pool} == set(spec.si_speakers)
    assert not {e.speaker for e in pool} & set(built.targets)
    target_files = set()
    for split in built.targets.values():
        target_files |= _files((*split.adapt, *split.dev, *split.test))
    assert target_files and not _files(pool) & target_files
    pool_ids = {e.utt_id.split("~")[0] for e in pool}
    target_ids = {e.utt_id for s in built.targets.values() for e in (*s.adapt, *s.dev, *s.test)}
    assert not pool_ids & target_ids
    # the pool: 300 + 25 joined utterances per real speaker, train x3 with its augmented copies
    n_train, n_dev = spec.fsdd_pool_counts
    assert len(built.si_train) == 3 * n_train * (1 + spec.augment_copies)
    assert len(built.si_dev) == 3 * n_dev and all(e.augment is None for e in built.si_dev)
    assert not _files(built.si_train) & _files(built.si_dev)  # dev from other takes


def test_a_target_recording_in_the_pool_is_refused(fsdd_root, tmp_path):
    spec = _fold(0, root=str(fsdd_root), augment_copies=0)
    built = corpus.build(spec, tmp_path, report=issues.InputReport())
    leaked = built.targets["theo"].test[0]
    bad = dataclasses.replace(built, si_train=(*built.si_train, leaked))
    with pytest.raises(ValueError, match=r"theo.*stage-2 pool"):
        corpus.check_no_leak(bad)


def test_an_unknown_speaker_is_named(fsdd_root, tmp_path):
    spec = _fold(0, root=str(fsdd_root), speakers=("george", "nobody"))
    with pytest.raises(config_lib.ConfigError, match=r"nobody.*found: george"):
        corpus.build(spec, tmp_path, report=issues.InputReport())


def test_speakers_sharing_one_recording_in_different_spans_are_no_leak():
    from pqm_jax.data import corpora, speakers

    def entry(uid, speaker, start, end):
        return corpora.Entry(uid, speaker, "hi", (corpora.Segment("/talk.wav", start, end),))

    split = speakers.Split(adapt=(entry("a1", "ann", 0.0, 1.0),), dev=(), test=())
    ok = corpus.Corpus(targets={"ann": split}, si_train=(entry("b1", "bob", 1.0, 2.0),))
    corpus.check_no_leak(ok)
    bad = dataclasses.replace(ok, si_train=(entry("b2", "bob", 0.0, 1.0),))
    with pytest.raises(ValueError, match="ann is in the stage-2 pool"):
        corpus.check_no_leak(bad)
