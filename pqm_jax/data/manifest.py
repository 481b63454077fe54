"""JSONL manifests: one JSON object a line with `path`, `text`, `speaker` for any other corpus.

Optional keys: `utt_id` (default: the file stem), `split` ("adapt"/"train", "dev", "test"),
`duration` (seconds), `start`/`end` (seconds, to cut a span of a longer file) and
`sample_rate` (the rate the file is expected to have; default 16000). Relative paths are
resolved against the manifest's folder.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Iterator

from pqm_jax.data import audio, corpora, corpus, issues, sources, speakers

REQUIRED = ("path", "text", "speaker")
_NUMERIC = ("start", "end", "duration", "sample_rate")


def list_entries(
    path: str | os.PathLike,
    *,
    speakers: set[str] | None = None,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> list[corpora.Entry]:
    """Entries of a manifest in file order, without reading audio.

    Malformed lines, duplicate ids and missing audio files are reported and skipped.
    """
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    path = pathlib.Path(path)
    base = path.parent
    seen: set[str] = set()
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            row = _parse(line, where, report)
            if row is None:
                continue
            if speakers is not None and str(row["speaker"]) not in speakers:
                continue
            audio_path = pathlib.Path(row["path"])
            audio_path = audio_path if audio_path.is_absolute() else base / audio_path
            utt_id = str(row.get("utt_id") or audio_path.stem)
            if utt_id in seen:
                report.issue(
                    issues.Kind.BAD_RECORD, issues.Action.SKIPPED, where, f"duplicate id {utt_id}"
                )
                continue
            if not audio_path.is_file():
                report.issue(
                    issues.Kind.MISSING_AUDIO,
                    issues.Action.SKIPPED,
                    where,
                    f"{audio_path} does not exist",
                )
                continue
            seen.add(utt_id)
            entry = corpora.make_entry(
                utt_id,
                str(row["speaker"]),
                str(row["text"]),
                (corpora.Segment(str(audio_path), row.get("start"), row.get("end")),),
                options=options,
                report=report,
                name=f"{where} ({audio_path.name})",
                expected_rate=int(row.get("sample_rate", audio.TARGET_RATE)),
                duration=row.get("duration"),
                split=row.get("split"),
            )
            if entry is not None:
                entries.append(entry)
    return entries


def read(
    path: str | os.PathLike,
    *,
    speakers: set[str] | None = None,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> Iterator[corpora.Utterance]:
    """Yields the manifest's utterances with audio, in file order."""
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    entries = list_entries(path, speakers=speakers, options=options, report=report)
    yield from corpora.iter_utterances(entries, options=options, report=report)


def write(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Writes `rows` (dicts with at least path, text, speaker) as JSONL, atomically; a file
    that already holds exactly these rows is left untouched."""
    lines = []
    for row in rows:
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ValueError(f"manifest row lacks {missing}: {row}")
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    text = "".join(lines)
    try:
        if pathlib.Path(path).read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    tmp = f"{os.fspath(path)}.part"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _parse(line: str, where: str, report: issues.InputReport) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        report.issue(issues.Kind.BAD_RECORD, issues.Action.SKIPPED, where, f"invalid JSON: {e}")
        return None
    if not isinstance(row, dict):
        report.issue(issues.Kind.BAD_RECORD, issues.Action.SKIPPED, where, "not a JSON object")
        return None
    missing = [k for k in REQUIRED if row.get(k) is None]
    if "path" in missing:
        report.issue(issues.Kind.MISSING_AUDIO, issues.Action.SKIPPED, where, "no path")
        return None
    if "text" in missing:
        report.issue(issues.Kind.EMPTY_TRANSCRIPT, issues.Action.SKIPPED, where, "no text")
        return None
    if missing:
        report.issue(issues.Kind.BAD_RECORD, issues.Action.SKIPPED, where, f"no {missing}")
        return None
    for key, kinds in (("path", str), ("text", str), ("speaker", str | int)):
        value = row[key]  # "text": 12345 or ["one"] is no transcript; speaker 7 is "7"
        if isinstance(value, bool) or not isinstance(value, kinds):
            detail = f"{key}={value!r} is a {type(value).__name__}, not a string"
            report.issue(issues.Kind.BAD_RECORD, issues.Action.SKIPPED, where, detail)
            return None
    for key in _NUMERIC:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            report.issue(issues.Kind.BAD_RECORD, issues.Action.SKIPPED, where, f"{key}={value!r}")
            return None
    return row


def build_corpus(spec, data_dir: pathlib.Path, report: issues.InputReport) -> corpus.Corpus:
    """The "manifest" source: rows' own "split" fields when every chosen row has one, else
    `spec.split`; the stage-2 pool from `spec.si_root` (or the other speakers of `spec.root`)."""
    del data_dir
    corpus.check_roots(spec, "a manifest.jsonl")
    entries = list_entries(spec.root, report=report)
    pool_entries = list_entries(spec.si_root, report=report) if spec.si_root else entries
    chosen = [e for e in entries if not spec.speakers or e.speaker in set(spec.speakers)]
    if not (chosen and all(e.split for e in chosen)):
        return corpus.from_entries(spec, entries, pool_entries, report)
    targets = speakers.split_from_field(chosen, report=report)
    si_train, si_dev = corpus.pool(pool_entries, spec, set(targets))
    return corpus.Corpus(targets=targets, si_train=si_train, si_dev=si_dev)


SOURCE = sources.register(
    sources.Source(name="manifest", build=build_corpus, list_entries=list_entries)
)
