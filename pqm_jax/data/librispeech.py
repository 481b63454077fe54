"""LibriSpeech directory layout: `speaker/chapter/{speaker}-{chapter}-{n}.flac` + `*.trans.txt`."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator

from pqm_jax.data import corpora, corpus, issues, sources
from pqm_jax.text import transcripts as text

AUDIO_SUFFIXES = (".flac", ".wav")


@dataclasses.dataclass(frozen=True)
class SpeakerInfo:
    """One row of LibriSpeech's SPEAKERS.TXT."""

    speaker: str
    sex: str
    subset: str
    minutes: float
    name: str


def list_entries(
    root: str | os.PathLike,
    *,
    speakers: set[str] | None = None,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> list[corpora.Entry]:
    """Lists the utterances under `root` (a subset such as `train-clean-100`, or any folder above
    the speaker folders), sorted by utterance id, without reading audio.

    A transcript line without its audio file, and an audio file without a transcript line, are
    reported and skipped. `speakers` restricts the listing (e.g. to this host's speakers).
    """
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech root {root} is not a directory")
    entries = []
    chapters = sorted({p.parent for p in root.rglob("*.trans.txt")} | _audio_dirs(root))
    for chapter in chapters:
        speaker = chapter.parent.name
        if speakers is not None and speaker not in speakers:
            continue
        audio_files = {p.stem: p for p in chapter.iterdir() if p.suffix in AUDIO_SUFFIXES}
        lines: dict[str, str] = {}
        for trans in sorted(chapter.glob("*.trans.txt")):
            for utt_id, words in text.read_transcript_file(trans):
                lines[utt_id] = words
                if utt_id not in audio_files:
                    report.issue(
                        issues.Kind.MISSING_AUDIO,
                        issues.Action.SKIPPED,
                        trans,
                        f"{utt_id}: no {utt_id}.flac",
                    )
        for stem, path in sorted(audio_files.items()):
            if stem not in lines:
                report.issue(issues.Kind.MISSING_TRANSCRIPT, issues.Action.SKIPPED, path)
                continue
            entry = corpora.make_entry(
                stem,
                stem.split("-")[0] if "-" in stem else speaker,
                lines[stem],
                (corpora.Segment(str(path)),),
                options=options,
                report=report,
                name=f"{path}",
            )
            if entry is not None:
                entries.append(entry)
    return sorted(entries, key=lambda e: e.utt_id)


def read(
    root: str | os.PathLike,
    *,
    speakers: set[str] | None = None,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> Iterator[corpora.Utterance]:
    """Yields the utterances under `root` with audio (16 kHz float32), sorted by id."""
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    entries = list_entries(root, speakers=speakers, options=options, report=report)
    yield from corpora.iter_utterances(entries, options=options, report=report)


def read_speakers(path: str | os.PathLike) -> dict[str, SpeakerInfo]:
    """Parses SPEAKERS.TXT (`ID | SEX | SUBSET | MINUTES | NAME`, `;` comments)."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            cols = [c.strip() for c in line.split("|", 4)]
            if len(cols) < 5:
                continue
            try:
                minutes = float(cols[3])
            except ValueError:
                continue
            out[cols[0]] = SpeakerInfo(cols[0], cols[1], cols[2], minutes, cols[4])
    return out


def _audio_dirs(root: pathlib.Path) -> set[pathlib.Path]:
    return {p.parent for suffix in AUDIO_SUFFIXES for p in root.rglob(f"*{suffix}")}


def build_corpus(spec, data_dir: pathlib.Path, report: issues.InputReport) -> corpus.Corpus:
    """The "librispeech" source: `spec.split` of each target speaker of `spec.root`; the stage-2
    pool from `spec.si_root` (or the other speakers of `spec.root`)."""
    del data_dir
    corpus.check_roots(spec, "a LibriSpeech subset folder")
    entries = list_entries(spec.root, report=report)
    pool_entries = list_entries(spec.si_root, report=report) if spec.si_root else entries
    return corpus.from_entries(spec, entries, pool_entries, report)


SOURCE = sources.register(
    sources.Source(name="librispeech", build=build_corpus, list_entries=list_entries)
)
