"""Hugging Face `datasets` corpora (e.g. a LibriSpeech parquet dataset).

Audio is decoded here with soundfile from the stored bytes (the column is cast to
`datasets.Audio(decode=False)`), never with torchcodec. Text and speaker columns are read
without touching audio, so splits and host sharding happen before any decoding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import datasets

from pqm_jax.data import audio, corpora, issues

_SCHEME = "hf://"


@dataclasses.dataclass(frozen=True)
class Columns:
    """Column names (defaults: the LibriSpeech parquet layout). `utt_id=None` uses the row."""

    audio: str = "audio"
    text: str = "text"
    speaker: str = "speaker_id"
    utt_id: str | None = "id"


def list_entries(
    dataset: datasets.Dataset,
    *,
    columns: Columns = Columns(),
    speakers: set[str] | None = None,
    expected_rate: int | None = audio.TARGET_RATE,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> list[corpora.Entry]:
    """Entries for the rows of `dataset` (in row order) without decoding audio.

    Each entry's segment path is `hf://{dataset name}/{row}`; `read` maps it back to the row.
    """
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    name = _name(dataset)
    texts = list(dataset[columns.text])
    spks = [str(s) for s in dataset[columns.speaker]]
    ids = (
        [str(i) for i in dataset[columns.utt_id]]
        if columns.utt_id
        else [str(i) for i in range(len(texts))]
    )
    entries = []
    for row, (utt_id, speaker, words) in enumerate(zip(ids, spks, texts, strict=True)):
        if speakers is not None and speaker not in speakers:
            continue
        where = f"{_SCHEME}{name}/{row}"
        entry = corpora.make_entry(
            utt_id,
            speaker,
            words or "",
            (corpora.Segment(where),),
            options=options,
            report=report,
            name=f"{where} [{utt_id}]",
            expected_rate=expected_rate,
        )
        if entry is not None:
            entries.append(entry)
    return entries


def read(
    dataset: datasets.Dataset,
    *,
    columns: Columns = Columns(),
    speakers: set[str] | None = None,
    entries: list[corpora.Entry] | None = None,
    expected_rate: int | None = audio.TARGET_RATE,
    options: corpora.ReadOptions | None = None,
    report: issues.InputReport | None = None,
) -> Iterator[corpora.Utterance]:
    """Yields utterances of `dataset` (or of the given `entries` of it) with decoded audio."""
    options = options or corpora.ReadOptions()
    report = issues.default(report)
    if entries is None:
        entries = list_entries(
            dataset,
            columns=columns,
            speakers=speakers,
            expected_rate=expected_rate,
            options=options,
            report=report,
        )
    raw = _undecoded(dataset, columns.audio)

    def fetch(seg: corpora.Segment) -> audio.Source:
        cell = raw[int(seg.path.rsplit("/", 1)[1])][columns.audio]
        if cell is None:
            return b""  # reported as corrupt audio by the loader
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            return cell["path"]
        return b""  # reported as corrupt audio by the loader

    yield from corpora.iter_utterances(entries, options=options, report=report, fetch=fetch)


def _undecoded(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    feature = dataset.features.get(column)
    if isinstance(feature, datasets.Audio) and feature.decode:
        dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    return dataset.select_columns([column])


def _name(dataset: datasets.Dataset) -> str:
    info = getattr(dataset, "info", None)
    return (getattr(info, "dataset_name", None) or "dataset") + (
        f"/{dataset.split}" if getattr(dataset, "split", None) else ""
    )
