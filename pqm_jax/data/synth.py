"""Synthetic speakers: espeak-ng voices (accent x variant x pitch x rate) reading text.

The engine is `libespeak-ng` from the PyPI package `espeakng-loader` (library + voice data, no
system package), driven through ctypes in synchronous mode; the `espeak-ng` command-line
program is used only if the library cannot be loaded and the program is installed. Rendering
writes 16 kHz WAVs plus a `manifest.jsonl` (see `manifest`) into a folder, skips files already
rendered (resumable), and is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import pathlib
import re
import time
import zlib
from collections.abc import Sequence

import numpy as np
import soundfile

from pqm_jax import errors
from pqm_jax.data import audio, corpus, espeak, issues, manifest, sources, speakers
from pqm_jax.text import transcripts as text

ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
VARIANTS = ("", *(f"m{i}" for i in range(1, 8)), *(f"f{i}" for i in range(1, 6)))
REFERENCE_VOICES = ("en-gb-scotland", "en-029", "en-gb+m7", "en-us+f2")


@dataclasses.dataclass(frozen=True)
class Voice:
    """An espeak-ng voice setting = one synthetic speaker.

    Attributes:
      name: espeak voice, optionally with a variant: "en-gb-scotland", "en-us+f2".
      pitch: base pitch 0-99 (espeak default 50).
      rate: speaking rate in words per minute (espeak default 175).
    """

    name: str
    pitch: int = espeak.DEFAULT_PITCH
    rate: int = espeak.DEFAULT_RATE

    @property
    def speaker(self) -> str:
        """Speaker id: the voice name, plus pitch/rate when they are not espeak's defaults."""
        if (self.pitch, self.rate) == (espeak.DEFAULT_PITCH, espeak.DEFAULT_RATE):
            return self.name
        return f"{self.name}_p{self.pitch}_r{self.rate}"


@dataclasses.dataclass(frozen=True)
class Job:
    """One utterance to render."""

    utt_id: str
    voice: Voice
    text: str
    split: str | None = None


def voice_grid(
    accents: Sequence[str] = ACCENTS,
    variants: Sequence[str] = VARIANTS,
    pitches: Sequence[int] = (espeak.DEFAULT_PITCH,),
    rates: Sequence[int] = (espeak.DEFAULT_RATE,),
) -> list[Voice]:
    """Every combination accent x variant x pitch x rate ("" = the accent's own voice)."""
    return [
        Voice(f"{a}+{v}" if v else a, pitch=p, rate=r)
        for a, v, p, r in itertools.product(accents, variants, pitches, rates)
    ]


def sample_voices(
    n: int,
    *,
    seed: int,
    accents: Sequence[str] = ACCENTS,
    variants: Sequence[str] = VARIANTS,
    pitch_range: tuple[int, int] = (25, 75),
    rate_range: tuple[int, int] = (130, 220),
) -> list[Voice]:
    """`n` distinct voices drawn uniformly (integer pitch and rate), deterministic for `seed`."""
    space = len(accents) * len(variants) * (pitch_range[1] - pitch_range[0] + 1)
    space *= rate_range[1] - rate_range[0] + 1
    if n > space:
        raise ValueError(f"only {space} distinct voices in this space, asked for {n}")
    rng = np.random.default_rng(seed)
    out: dict[str, Voice] = {}
    while len(out) < n:
        a, v = str(rng.choice(accents)), str(rng.choice(variants))
        voice = Voice(
            f"{a}+{v}" if v else a,
            pitch=int(rng.integers(pitch_range[0], pitch_range[1] + 1)),
            rate=int(rng.integers(rate_range[0], rate_range[1] + 1)),
        )
        out.setdefault(voice.speaker, voice)
    return list(out.values())


def plan(
    voices: Sequence[Voice],
    sentences: Sequence[str],
    *,
    counts: dict[str, int],
    seed: int = 0,
    disjoint: bool = True,
) -> list[Job]:
    """Assigns sentences to voices: `counts` per split per voice (e.g. adapt 48, dev 12, test 30).

    Sentences are permuted with `seed`. With `disjoint`, every voice reads its own sentences
    (disjoint across voices and across splits; needs len(voices) * sum(counts) sentences);
    otherwise each voice draws its own seeded permutation, so splits stay disjoint within a
    voice but sentences may repeat across voices.
    """
    per_voice = sum(counts.values())
    if per_voice > len(sentences) or (disjoint and per_voice * len(voices) > len(sentences)):
        need = per_voice * (len(voices) if disjoint else 1)
        raise ValueError(f"need {need} sentences, got {len(sentences)}")
    order = np.random.default_rng(seed).permutation(len(sentences))
    jobs = []
    for k, voice in enumerate(voices):
        if disjoint:
            mine = order[k * per_voice : (k + 1) * per_voice]
        else:
            sub = np.random.default_rng([seed, zlib.crc32(voice.speaker.encode())])
            mine = sub.permutation(len(sentences))[:per_voice]
        start = 0
        for split, n in counts.items():
            for i, j in enumerate(mine[start : start + n]):
                utt_id = f"{voice.speaker}-{split}-{i:04d}"
                jobs.append(Job(utt_id=utt_id, voice=voice, text=sentences[j], split=split))
            start += n
    return jobs


def synthesize(voice: Voice, words: str, *, target_rate: int = audio.TARGET_RATE) -> np.ndarray:
    """Renders `words` with `voice` in this process: float32 [samples] at `target_rate`."""
    samples, rate = espeak.engine().synthesize(
        words, voice.name, pitch=voice.pitch, rate=voice.rate
    )
    return audio.resample(samples.astype(np.float32) / 32768.0, rate, target_rate)


def render(
    jobs: Sequence[Job],
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    target_rate: int = audio.TARGET_RATE,
    report: issues.InputReport | None = None,
) -> pathlib.Path:
    """Renders `jobs` into `out_dir/wav/{speaker}/{utt_id}.wav` and writes `out_dir/manifest.jsonl`.

    WAVs that already exist are kept (resumable; files are written atomically). `workers > 1`
    renders in that many processes (espeak-ng is one engine per process). Returns the manifest
    path. An empty text, or an utterance that renders to no audio, is reported and left out.
    """
    report = issues.default(report)
    out_dir = pathlib.Path(out_dir)
    for job in jobs:
        if not job.text.strip():
            report.issue(issues.Kind.EMPTY_TRANSCRIPT, issues.Action.SKIPPED, job.utt_id)
    jobs = [job for job in jobs if job.text.strip()]
    names = {v.name for v in {j.voice for j in jobs}}
    for name in sorted(names):
        espeak.engine().check_voice(name)
    ids = [j.utt_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate utterance ids in jobs")
    todo = []
    for job in jobs:
        path = _wav_path(out_dir, job)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.append((job, str(path)))
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")  # JAX may hold threads: never fork
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            chunk = max(1, len(todo) // (workers * 8))
            list(pool.map(_render_to, todo, itertools.repeat(target_rate), chunksize=chunk))
    else:
        for item in todo:
            _render_to(item, target_rate)
    rows = []
    for job in jobs:
        path = _wav_path(out_dir, job)
        frames = soundfile.info(str(path)).frames if path.is_file() else 0
        if frames == 0:
            report.issue(issues.Kind.EMPTY_AUDIO, issues.Action.SKIPPED, path, repr(job.text))
            continue
        rows.append(
            dict(
                path=str(path.relative_to(out_dir)),
                text=job.text,
                speaker=job.voice.speaker,
                utt_id=job.utt_id,
                split=job.split,
                duration=round(frames / target_rate, 4),
                voice=job.voice.name,
                pitch=job.voice.pitch,
                rate=job.voice.rate,
            )
        )
    manifest_path = out_dir / "manifest.jsonl"
    manifest.write(manifest_path, rows)
    return manifest_path


def reference_corpus(
    out_dir: str | os.PathLike,
    transcript_path: str | os.PathLike | None = None,
    *,
    voices: Sequence[str] = REFERENCE_VOICES,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    workers: int = 1,
    report: issues.InputReport | None = None,
) -> pathlib.Path:
    """The reference synthetic corpus: each voice reads 48 adapt + 12 dev + 30 test sentences of
    6-30 words, disjoint across voices and splits, from a LibriSpeech transcript file (e.g.
    `dev-clean.trans.txt`) or, without one, from `text.generate_sentences`."""
    counts = counts or {"adapt": 48, "dev": 12, "test": 30}
    need = len(voices) * sum(counts.values())
    if transcript_path is not None:
        rows = text.read_transcript_file(transcript_path)
        sentences = text.select_sentences([t for _, t in rows], min_words=6, max_words=30)
    else:
        sentences = text.generate_sentences(need, seed=seed, min_words=6, max_words=30)
    jobs = plan([Voice(v) for v in voices], sentences, counts=counts, seed=seed)
    return render(jobs, out_dir, workers=workers, report=report)


def _wav_path(out_dir: pathlib.Path, job: Job) -> pathlib.Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job.voice.speaker)
    return out_dir / "wav" / safe / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job.utt_id)}.wav"


def _render_to(item: tuple[Job, str], target_rate: int) -> None:
    job, path = item
    wave = synthesize(job.voice, job.text, target_rate=target_rate)
    audio.write_wav(path, wave, target_rate)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: render the reference corpus or N sampled speakers; prints the speed."""
    parser = argparse.ArgumentParser(prog="python -m pqm_jax.data.synth", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--transcripts", help="LibriSpeech *.trans.txt to read sentences from")
    parser.add_argument("--speakers", type=int, default=0, help="sampled voices (0: reference)")
    parser.add_argument("--adapt", type=int, default=48)
    parser.add_argument("--dev", type=int, default=12)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    counts = {"adapt": args.adapt, "dev": args.dev, "test": args.test}
    report = issues.InputReport()
    start = time.perf_counter()
    if args.speakers == 0:
        path = reference_corpus(
            args.out_dir,
            args.transcripts,
            counts=counts,
            seed=args.seed,
            workers=args.workers,
            report=report,
        )
    else:
        voices = sample_voices(args.speakers, seed=args.seed)
        need = len(voices) * sum(counts.values())
        if args.transcripts:
            rows = text.read_transcript_file(args.transcripts)
            sentences = text.select_sentences([t for _, t in rows])
        else:
            sentences = text.generate_sentences(need, seed=args.seed)
        jobs = plan(
            voices, sentences, counts=counts, seed=args.seed, disjoint=len(sentences) >= need
        )
        path = render(jobs, args.out_dir, workers=args.workers, report=report)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    seconds = sum(r["duration"] for r in rows)
    print(
        f"{path}: {len(rows)} utterances, {seconds:.0f} s of audio in {wall:.1f} s "
        f"({seconds / wall:.0f} s of audio per wall second, {args.workers} workers)"
    )
    print(report.summary())


def check_voices(voices: Sequence[Voice]) -> None:
    """ConfigError naming `data.voices` for a voice espeak-ng does not have."""
    eng = espeak.engine()
    for v in voices:
        try:
            eng.check_voice(v.name)
        except ValueError as e:
            raise errors.ConfigError(
                f"data.voices: {e}; voices look like en-us, en-gb-scotland, en-029, en-us+f2 "
                "(`espeak-ng --voices=en` lists them)"
            ) from None


def build_corpus(spec, data_dir: pathlib.Path, report: issues.InputReport) -> corpus.Corpus:
    """The "synth" source: `spec.voices` as target speakers (adapt/dev/test counts), plus
    `spec.si_voices` sampled voices as the stage-2 pool, rendered into `data_dir/synth` (or
    `spec.root`)."""
    out = pathlib.Path(spec.root) if spec.root else pathlib.Path(data_dir) / "synth"
    voices = [Voice(v) for v in spec.voices]
    check_voices(voices)
    names = {v.speaker for v in voices}
    pool = [
        v
        for v in sample_voices(spec.si_voices + len(voices), seed=spec.seed)
        if v.speaker not in names
    ][: spec.si_voices]
    adapt_n, dev_n, test_n = spec.counts
    train_n, si_dev_n = spec.si_counts
    need_t = len(voices) * (adapt_n + dev_n + test_n)
    need = need_t + len(pool) * (train_n + si_dev_n)
    digits = spec.text == "digits"
    sentences = corpus.digit_runs(need, spec.seed) if digits else corpus.sentences(spec, need)
    order = np.random.default_rng(spec.seed).permutation(len(sentences))
    disjoint = len(sentences) >= need
    first = [sentences[i] for i in order[:need_t]] if disjoint else sentences
    rest = [sentences[i] for i in order[need_t:]] if disjoint else sentences
    jobs = plan(
        voices,
        first,
        counts={"adapt": adapt_n, "dev": dev_n, "test": test_n},
        seed=spec.seed,
        disjoint=disjoint,
    )
    if pool:
        jobs += plan(
            pool,
            rest,
            counts={"train": train_n, "dev": si_dev_n},
            seed=spec.seed,
            disjoint=disjoint,
        )
    path = render(jobs, out, report=report)
    entries = manifest.list_entries(path, report=report)
    targets = speakers.split_from_field([e for e in entries if e.speaker in names], report=report)
    si = [e for e in entries if e.speaker not in names]
    return corpus.Corpus(
        targets=targets,
        si_train=tuple(e for e in si if e.split == "train"),
        si_dev=tuple(e for e in si if e.split == "dev"),
    )


def digit_pool(spec, data_dir: pathlib.Path, report: issues.InputReport) -> tuple[list, list]:
    """`spec.si_voices` sampled voices reading runs of 4 digit words (FSDD's references), as a
    (train, dev) stage-2 pool rendered into `data_dir/synth_digits`."""
    train_n, dev_n = spec.si_counts
    voices = sample_voices(spec.si_voices, seed=spec.seed)
    sentences = corpus.digit_runs(len(voices) * (train_n + dev_n), spec.seed)
    jobs = plan(voices, sentences, counts={"train": train_n, "dev": dev_n}, seed=spec.seed)
    path = render(jobs, pathlib.Path(data_dir) / "synth_digits", report=report)
    entries = manifest.list_entries(path, report=report)
    return [e for e in entries if e.split == "train"], [e for e in entries if e.split == "dev"]


SOURCE = sources.register(sources.Source(name="synth", build=build_corpus))


if __name__ == "__main__":
    main()
