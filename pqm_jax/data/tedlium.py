"""TED-LIUM 3: segments listed in `stm/*.stm` and cut from whole talks in `sph/*.sph`.

The speaker is the talk. STM lines read `talk channel speaker start end <label> words...`;
segments whose words are `ignore_time_segment_in_scoring` are dropped (not an input problem).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

from pqm_jax.data import corpora, corpus, issues, sources

IGNORE = "ignore_time_segment_in_scoring"


def normalise(words: str) -> str:
    """TED-LIUM tokenisation -> plain text: drops `<unk>`, re-attaches split clitics ("it 's")."""
    out: list[str] = []
    for w in words.split():
        if w == "<unk>":
            continue
        if w.startswith("'") and out:
            out[-1] += w
        else:
            out.append(w)
    return " ".join(out)


def list_entries(
    root: str | os.PathLike,
    *,
    speakers: set[str] | None = None,
    normalise_text: bool = True,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> list[corpora.Entry]:
    """Lists segments under `root` (a folder holding `stm/` and `sph/`, at any depth, e.g.
    `TEDLIUM_release-3/data` or `.../legacy/test`), sorted by talk and start time, without
    reading audio. Each `.stm` uses the `.sph` in the `sph/` folder beside its own.

    A talk whose `.sph` is missing is reported (all its segments skipped); a `.sph` without an
    `.stm` is reported too. Malformed STM lines are reported and skipped.
    """
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"TED-LIUM root {root} is not a directory")
    sphs = sorted(root.rglob("*.sph"))
    stms = sorted(root.rglob("*.stm"))
    talks_with_stm = {p.stem for p in stms}
    for path in sphs:
        if path.stem not in talks_with_stm:
            report.issue(issues.Kind.MISSING_TRANSCRIPT, issues.Action.SKIPPED, path, "no .stm")
    anywhere = {p.stem: p for p in sphs}
    entries = []
    seen: set[str] = set()
    for stm in stms:
        if speakers is not None and stm.stem not in speakers:
            continue
        rows = list(_parse_stm(stm, report))
        beside = stm.parent.parent / "sph" / f"{stm.stem}.sph"
        sph = beside if beside.is_file() else anywhere.get(stm.stem)
        if sph is None:
            if rows:
                report.issue(
                    issues.Kind.MISSING_AUDIO,
                    issues.Action.SKIPPED,
                    stm,
                    f"no {stm.stem}.sph; {len(rows)} segments",
                )
            continue
        path = str(sph)
        for talk, start, end, words in rows:
            utt_id = f"{talk}-{round(start * 100):07d}-{round(end * 100):07d}"
            if utt_id in seen:
                report.issue(
                    issues.Kind.BAD_RECORD,
                    issues.Action.SKIPPED,
                    stm,
                    f"duplicate segment {utt_id}",
                )
                continue
            seen.add(utt_id)
            entry = corpora.make_entry(
                utt_id,
                talk,
                normalise(words) if normalise_text else words,
                (corpora.Segment(path, start, end),),
                options=options,
                report=report,
                name=f"{stm} [{utt_id}]",
                duration=end - start,
            )
            if entry is not None:
                entries.append(entry)
    return sorted(entries, key=lambda e: (e.speaker, e.segments[0].start_s))


def read(
    root: str | os.PathLike,
    *,
    speakers: set[str] | None = None,
    normalise_text: bool = True,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> Iterator[corpora.Utterance]:
    """Yields TED-LIUM segments with audio (each talk decoded once), sorted by talk and time."""
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    entries = list_entries(
        root, speakers=speakers, normalise_text=normalise_text, options=options, report=report
    )
    yield from corpora.iter_utterances(entries, options=options, report=report)


def _parse_stm(
    path: pathlib.Path, report: issues.InputReport
) -> Iterator[tuple[str, float, float, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.startswith(";;"):
                continue
            cols = line.split(maxsplit=6)
            try:
                talk, start, end = cols[0], float(cols[3]), float(cols[4])
            except (IndexError, ValueError):
                report.issue(issues.Kind.BAD_RECORD, issues.Action.SKIPPED, f"{path}:{n}")
                continue
            words = cols[6] if len(cols) > 6 and cols[5].startswith("<") else " ".join(cols[5:])
            if words.strip() == IGNORE:
                continue
            if end <= start:
                report.issue(
                    issues.Kind.BAD_RECORD,
                    issues.Action.SKIPPED,
                    f"{path}:{n}",
                    f"end {end} <= start {start}",
                )
                continue
            yield talk, start, end, words.strip()


def build_corpus(spec, data_dir: pathlib.Path, report: issues.InputReport) -> corpus.Corpus:
    """The "tedlium" source: `spec.split` of each target speaker of `spec.root`; the stage-2
    pool from `spec.si_root` (or the other speakers of `spec.root`)."""
    del data_dir
    corpus.check_roots(spec, "a TED-LIUM folder (stm/ and sph/)")
    entries = list_entries(spec.root, report=report)
    pool_entries = list_entries(spec.si_root, report=report) if spec.si_root else entries
    return corpus.from_entries(spec, entries, pool_entries, report)


SOURCE = sources.register(
    sources.Source(name="tedlium", build=build_corpus, list_entries=list_entries)
)
