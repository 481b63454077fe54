"""Which utterances a run uses: target speakers' adapt/dev/test splits and the stage-2 pool.

Everything is decided from entries (transcripts and paths) before any audio is read, and is
deterministic for the data seed. Target speakers never appear in the speaker-independent pool
(`speakers.check_disjoint`). `build` asks the source registry (`sources`) for the reader named
by `data.source`; the helpers below are what readers share.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import TYPE_CHECKING

import numpy as np

from pqm_jax import errors
from pqm_jax.data import augment, corpora, issues, sources, speakers
from pqm_jax.text import transcripts

if TYPE_CHECKING:
    from pqm_jax.data import spec as spec_lib

DEFAULT_TRANSCRIPTS = pathlib.Path("librispeech-dev-clean-text") / "dev-clean.trans.txt"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """targets: {speaker: Split of entries}; si_train / si_dev: the stage-2 pool's entries."""

    targets: dict[str, speakers.Split]
    si_train: tuple[corpora.Entry, ...] = ()
    si_dev: tuple[corpora.Entry, ...] = ()

    def summary(self) -> str:
        n = {p: sum(len(s.part(p)) for s in self.targets.values()) for p in speakers.PARTS}
        return (
            f"{len(self.targets)} target speakers ({n['adapt']} adapt / {n['dev']} dev / "
            f"{n['test']} test utterances); stage-2 pool {len(self.si_train)} train + "
            f"{len(self.si_dev)} dev utterances"
        )


def build(spec: spec_lib.DataSpec, data_dir: pathlib.Path, *, report: issues.InputReport) -> Corpus:
    """The run's corpus from the source `spec.source`; synthetic speakers are rendered into
    `data_dir` (a run's `data/` folder; resumably).

    Raises:
      ConfigError: no target speaker, or a spec the source cannot use (naming the key).
    """
    corpus = sources.get(spec.source).build(spec, pathlib.Path(data_dir), report)
    if not corpus.targets:
        raise errors.ConfigError(f"data: no target speakers found ({spec.source} {spec.root})")
    speakers.check_disjoint(list(corpus.si_train) + list(corpus.si_dev), list(corpus.targets))
    check_no_leak(corpus)
    policy = spec.augment_policy()
    if policy.copies:
        corpus = dataclasses.replace(
            corpus, si_train=tuple(augment.copies(corpus.si_train, policy))
        )
    return corpus


def check_no_leak(corpus: Corpus) -> None:
    """Raises ValueError when a target speaker's audio (a file, or the same span of one: several
    speakers may share a recording) is also in the stage-2 pool, which pretraining and stage 2
    see, or when one span serves two target speakers."""
    owner: dict[corpora.Segment, str] = {}
    for speaker, split in corpus.targets.items():
        for entry in (*split.adapt, *split.dev, *split.test):
            for seg in entry.segments:
                if owner.setdefault(seg, speaker) != speaker:
                    raise ValueError(f"{seg.path} belongs to targets {owner[seg]} and {speaker}")
    for entry in (*corpus.si_train, *corpus.si_dev):
        for seg in entry.segments:
            if seg in owner:
                raise ValueError(
                    f"{seg.path} of target speaker {owner[seg]} is in the stage-2 pool "
                    f"({entry.utt_id}): a target's audio must not be seen before its stage 3"
                )


def from_entries(
    spec: spec_lib.DataSpec, entries: list, pool_entries: list, report: issues.InputReport
) -> Corpus:
    """Targets split from `entries` (data.speakers, data.split), the stage-2 pool from
    `pool_entries` less the targets: what readers of a corpus folder or file share."""
    wanted = set(spec.speakers)
    candidates = wanted or {e.speaker for e in entries}
    targets = targets_of(entries, spec, report)
    dropped = sorted(candidates - set(targets))
    if wanted and dropped:
        raise errors.ConfigError(
            f"data.speakers names {', '.join(dropped)}, left out for too few usable utterances "
            "(warned above); add utterances or remove them from data.speakers"
        )
    # a target speaker left out for lack of data is still not a stage-2 speaker
    si_train, si_dev = pool(pool_entries, spec, candidates)
    return Corpus(targets=targets, si_train=si_train, si_dev=si_dev)


def check_roots(spec: spec_lib.DataSpec, what: str) -> None:
    """ConfigError naming `data.root` / `data.si_root` when a given one does not exist."""
    if not spec.root:
        raise errors.ConfigError(f"data.root must name {what}")
    for key in ("root", "si_root"):
        value = getattr(spec, key)
        if value and not pathlib.Path(value).exists():
            raise errors.ConfigError(f"data.{key}={value!r} does not exist (it should be {what})")


def pick(items: list, n: int, seed: int, tag: str) -> list:
    if n <= 0 or n >= len(items):
        return items
    rng = np.random.default_rng([seed, sum(tag.encode())])
    keep = sorted(rng.permutation(len(items))[:n].tolist())
    return [items[i] for i in keep]


def pool(entries: list, spec: spec_lib.DataSpec, exclude: set[str]) -> tuple[tuple, tuple]:
    """Stage-2 (train, dev) from entries of non-target speakers, with the configured caps."""
    wanted = set(spec.si_speakers)
    entries = [e for e in entries if e.speaker not in exclude]
    if wanted:
        entries = [e for e in entries if e.speaker in wanted]
    names = sorted({e.speaker for e in entries})
    names = set(pick(names, spec.max_si_speakers, spec.seed, "si-speakers"))
    entries = sorted((e for e in entries if e.speaker in names), key=lambda e: e.utt_id)
    cap = spec.max_si_utterances + spec.si_dev_utterances if spec.max_si_utterances else 0
    entries = pick(entries, cap, spec.seed, "si-utterances")
    dev = set(e.utt_id for e in pick(entries, spec.si_dev_utterances, spec.seed, "si-dev"))
    if len(dev) >= len(entries):
        dev = set()
    return (
        tuple(e for e in entries if e.utt_id not in dev),
        tuple(e for e in entries if e.utt_id in dev),
    )


def targets_of(entries: list, spec: spec_lib.DataSpec, report) -> dict[str, speakers.Split]:
    wanted = set(spec.speakers)
    if wanted:
        missing = wanted - {e.speaker for e in entries}
        if missing:
            raise errors.ConfigError(f"data.speakers not found in {spec.root}: {sorted(missing)}")
        entries = [e for e in entries if e.speaker in wanted]
    a, d, t = spec.split
    split = speakers.SplitConfig(adapt=a, dev=d, test=t, seed=spec.seed)
    return speakers.split_by_speaker(entries, split, report=report)


def sentences(spec: spec_lib.DataSpec, need: int) -> list[str]:
    path = pathlib.Path(spec.transcripts) if spec.transcripts else None
    if path is None:
        from pqm_jax import resources

        default = resources.shared_data_dir() / DEFAULT_TRANSCRIPTS
        path = default if default.is_file() else None
    if path is not None:
        rows = transcripts.read_transcript_file(path)
        found = transcripts.select_sentences(
            [t for _, t in rows], min_words=spec.min_words, max_words=spec.max_words
        )
        if len(found) >= need:
            return found
    return transcripts.generate_sentences(
        need, seed=spec.seed, min_words=spec.min_words, max_words=spec.max_words
    )


def digit_runs(n: int, seed: int) -> list[str]:
    """n runs of 4 random digit words ("four one nine zero"), FSDD's joined references."""
    rng = np.random.default_rng(seed)
    return [" ".join(transcripts.DIGIT_WORDS[d] for d in rng.integers(0, 10, 4)) for _ in range(n)]
