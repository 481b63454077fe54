"""Which utterances a run uses: target speakers' adapt/dev/test splits and the stage-2 pool.

Everything is decided from entries (transcripts and paths) before any audio is read, and is
deterministic for the data seed. Target speakers never appear in the speaker-independent pool
(`speakers.check_disjoint`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from pqm_jax.data import corpora, fsdd, issues, librispeech, manifest, speakers, synth, tedlium
from pqm_jax.data import text as data_text
from pqm_jax.train import config as config_lib

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


def build(
    spec: config_lib.DataSpec, workdir: pathlib.Path, *, report: issues.InputReport
) -> Corpus:
    """The run's corpus; synthetic speakers are rendered into `workdir/data` (resumably)."""
    builders = {
        "synth": _synth,
        "fsdd": _fsdd,
        "librispeech": _librispeech,
        "tedlium": _tedlium,
        "manifest": _manifest,
    }
    corpus = builders[spec.source](spec, pathlib.Path(workdir), report)
    if not corpus.targets:
        raise config_lib.ConfigError(f"data: no target speakers found ({spec.source} {spec.root})")
    speakers.check_disjoint(list(corpus.si_train) + list(corpus.si_dev), list(corpus.targets))
    return corpus


def _pick(items: list, n: int, seed: int, tag: str) -> list:
    if n <= 0 or n >= len(items):
        return items
    rng = np.random.default_rng([seed, sum(tag.encode())])
    keep = sorted(rng.permutation(len(items))[:n].tolist())
    return [items[i] for i in keep]


def _pool(entries: list, spec: config_lib.DataSpec, exclude: set[str]) -> tuple[tuple, tuple]:
    """Stage-2 (train, dev) from entries of non-target speakers, with the configured caps."""
    wanted = set(spec.si_speakers)
    entries = [e for e in entries if e.speaker not in exclude]
    if wanted:
        entries = [e for e in entries if e.speaker in wanted]
    names = sorted({e.speaker for e in entries})
    names = set(_pick(names, spec.max_si_speakers, spec.seed, "si-speakers"))
    entries = sorted((e for e in entries if e.speaker in names), key=lambda e: e.utt_id)
    cap = spec.max_si_utterances + spec.si_dev_utterances if spec.max_si_utterances else 0
    entries = _pick(entries, cap, spec.seed, "si-utterances")
    dev = set(e.utt_id for e in _pick(entries, spec.si_dev_utterances, spec.seed, "si-dev"))
    if len(dev) >= len(entries):
        dev = set()
    return (
        tuple(e for e in entries if e.utt_id not in dev),
        tuple(e for e in entries if e.utt_id in dev),
    )


def _targets(entries: list, spec: config_lib.DataSpec, report) -> dict[str, speakers.Split]:
    wanted = set(spec.speakers)
    if wanted:
        missing = wanted - {e.speaker for e in entries}
        if missing:
            raise config_lib.ConfigError(
                f"data.speakers not found in {spec.root}: {sorted(missing)}"
            )
        entries = [e for e in entries if e.speaker in wanted]
    a, d, t = spec.split
    split = speakers.SplitConfig(adapt=a, dev=d, test=t, seed=spec.seed)
    return speakers.split_by_speaker(entries, split, report=report)


def _sentences(spec: config_lib.DataSpec, need: int) -> list[str]:
    path = pathlib.Path(spec.transcripts) if spec.transcripts else None
    if path is None:
        from pqm_jax import resources

        default = resources.shared_data_dir() / DEFAULT_TRANSCRIPTS
        path = default if default.is_file() else None
    if path is not None:
        rows = data_text.read_transcript_file(path)
        found = data_text.select_sentences(
            [t for _, t in rows], min_words=spec.min_words, max_words=spec.max_words
        )
        if len(found) >= need:
            return found
    return data_text.generate_sentences(
        need, seed=spec.seed, min_words=spec.min_words, max_words=spec.max_words
    )


def _synth(spec, workdir, report) -> Corpus:
    out = pathlib.Path(spec.root) if spec.root else workdir / "data" / "synth"
    voices = [synth.Voice(v) for v in spec.voices]
    names = {v.speaker for v in voices}
    pool = [
        v
        for v in synth.sample_voices(spec.si_voices + len(voices), seed=spec.seed)
        if v.speaker not in names
    ][: spec.si_voices]
    adapt_n, dev_n, test_n = spec.counts
    train_n, si_dev_n = spec.si_counts
    need_t = len(voices) * (adapt_n + dev_n + test_n)
    need = need_t + len(pool) * (train_n + si_dev_n)
    sentences = _digit_runs(need, spec.seed) if spec.text == "digits" else _sentences(spec, need)
    order = np.random.default_rng(spec.seed).permutation(len(sentences))
    disjoint = len(sentences) >= need
    first = [sentences[i] for i in order[:need_t]] if disjoint else sentences
    rest = [sentences[i] for i in order[need_t:]] if disjoint else sentences
    jobs = synth.plan(
        voices,
        first,
        counts={"adapt": adapt_n, "dev": dev_n, "test": test_n},
        seed=spec.seed,
        disjoint=disjoint,
    )
    if pool:
        jobs += synth.plan(
            pool,
            rest,
            counts={"train": train_n, "dev": si_dev_n},
            seed=spec.seed,
            disjoint=disjoint,
        )
    path = synth.render(jobs, out, report=report)
    entries = manifest.list_entries(path, report=report)
    targets = speakers.split_from_field([e for e in entries if e.speaker in names], report=report)
    si = [e for e in entries if e.speaker not in names]
    return Corpus(
        targets=targets,
        si_train=tuple(e for e in si if e.split == "train"),
        si_dev=tuple(e for e in si if e.split == "dev"),
    )


def _fsdd(spec, workdir, report) -> Corpus:
    n_train, n_dev, n_test = spec.fsdd_counts
    protocol = fsdd.Protocol(n_train=n_train, n_dev=n_dev, n_test=n_test, seed=spec.seed)
    splits = fsdd.reference_split(spec.root or None, protocol=protocol, report=report)
    wanted = set(spec.speakers) or set(splits) - set(spec.si_speakers)
    targets = {s: splits[s] for s in sorted(wanted) if s in splits}
    pool_names = set(spec.si_speakers) - wanted
    si_train = speakers.pool_parts({s: splits[s] for s in pool_names}, "adapt")
    si_dev = speakers.pool_parts({s: splits[s] for s in pool_names}, "dev")
    if not pool_names and spec.si_voices > 0:  # stage 2 on synthetic voices reading digits
        si_train, si_dev = _synth_digit_pool(spec, workdir, report)
    return Corpus(targets=targets, si_train=tuple(si_train), si_dev=tuple(si_dev))


def _digit_runs(n: int, seed: int) -> list[str]:
    """n runs of 4 random digit words ("four one nine zero"), FSDD's joined references."""
    rng = np.random.default_rng(seed)
    return [" ".join(data_text.DIGIT_WORDS[d] for d in rng.integers(0, 10, 4)) for _ in range(n)]


def _synth_digit_pool(spec, workdir, report) -> tuple[list, list]:
    """`si_voices` sampled espeak-ng voices reading runs of 4 digit words (FSDD's references)."""
    train_n, dev_n = spec.si_counts
    voices = synth.sample_voices(spec.si_voices, seed=spec.seed)
    sentences = _digit_runs(len(voices) * (train_n + dev_n), spec.seed)
    jobs = synth.plan(voices, sentences, counts={"train": train_n, "dev": dev_n}, seed=spec.seed)
    path = synth.render(jobs, pathlib.Path(workdir) / "data" / "synth_digits", report=report)
    entries = manifest.list_entries(path, report=report)
    return [e for e in entries if e.split == "train"], [e for e in entries if e.split == "dev"]


def _librispeech(spec, workdir, report) -> Corpus:
    del workdir
    if not spec.root:
        raise config_lib.ConfigError("data.root must name a LibriSpeech subset folder")
    entries = librispeech.list_entries(spec.root, report=report)
    targets = _targets(entries, spec, report)
    pool_entries = (
        librispeech.list_entries(spec.si_root, report=report) if spec.si_root else entries
    )
    si_train, si_dev = _pool(pool_entries, spec, set(targets))
    return Corpus(targets=targets, si_train=si_train, si_dev=si_dev)


def _tedlium(spec, workdir, report) -> Corpus:
    del workdir
    if not spec.root:
        raise config_lib.ConfigError("data.root must name a TED-LIUM folder (stm/ and sph/)")
    entries = tedlium.list_entries(spec.root, report=report)
    targets = _targets(entries, spec, report)
    pool_entries = tedlium.list_entries(spec.si_root, report=report) if spec.si_root else entries
    si_train, si_dev = _pool(pool_entries, spec, set(targets))
    return Corpus(targets=targets, si_train=si_train, si_dev=si_dev)


def _manifest(spec, workdir, report) -> Corpus:
    del workdir
    if not spec.root:
        raise config_lib.ConfigError("data.root must name a manifest.jsonl")
    entries = manifest.list_entries(spec.root, report=report)
    chosen = [e for e in entries if not spec.speakers or e.speaker in set(spec.speakers)]
    if chosen and all(e.split for e in chosen):
        targets = speakers.split_from_field(chosen, report=report)
    else:
        targets = _targets(entries, spec, report)
    pool_entries = manifest.list_entries(spec.si_root, report=report) if spec.si_root else entries
    si_train, si_dev = _pool(pool_entries, spec, set(targets))
    return Corpus(targets=targets, si_train=si_train, si_dev=si_dev)
