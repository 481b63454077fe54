"""Corpus-independent types: `Entry` (an utterance before its audio is read) and `Utterance`.

Readers (`librispeech`, `tedlium`, `fsdd`, `manifest`, `hf`) first list `Entry`s cheaply
(transcripts and paths, no audio), so that splits and host sharding can pick utterances before
any audio is decoded; `iter_utterances` then reads the audio of the chosen entries only.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from pqm_jax.data import audio, augment, issues
from pqm_jax.text import transcripts


def clean_transcript(
    text: str,
    *,
    name: str,
    non_ascii: str = "transliterate",
    report: issues.InputReport | None = None,
) -> str | None:
    """Checks one transcript: returns the text to use, or `None` if the utterance is skipped.

    Whitespace is collapsed. An empty transcript is skipped. Non-ASCII text is handled by
    `non_ascii`: "transliterate" (`transcripts.to_ascii`, skipped if nothing is left), "skip" or "keep";
    each case is reported.
    """
    report = issues.default(report)
    text = " ".join(text.split())
    if not text:
        report.issue(issues.Kind.EMPTY_TRANSCRIPT, issues.Action.SKIPPED, name)
        return None
    if text.isascii():
        return text
    bad = "".join(sorted({c for c in text if ord(c) >= 128}))[:20]
    detail = f"characters {bad!r}"
    if non_ascii == "keep":
        report.issue(issues.Kind.NON_ASCII, issues.Action.KEPT, name, detail)
        return text
    if non_ascii == "skip":
        report.issue(issues.Kind.NON_ASCII, issues.Action.SKIPPED, name, detail)
        return None
    if non_ascii != "transliterate":
        raise ValueError(f"unknown non_ascii policy {non_ascii!r}")
    ascii_text = " ".join(transcripts.to_ascii(text).split())
    if not ascii_text:
        report.issue(issues.Kind.NON_ASCII, issues.Action.SKIPPED, name, detail + ", nothing left")
        return None
    report.issue(issues.Kind.NON_ASCII, issues.Action.TRANSLITERATED, name, detail)
    return ascii_text


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How readers treat audio and text.

    Attributes:
      target_rate: output sample rate (Hz).
      max_seconds: longest utterance kept (Whisper's window is 30 s); `None` for no limit.
      too_long: "skip" or "truncate" utterances longer than `max_seconds`.
      non_ascii: "transliterate", "skip" or "keep" non-ASCII transcripts.
    """

    target_rate: int = audio.TARGET_RATE
    max_seconds: float | None = 30.0
    too_long: str = "skip"
    non_ascii: str = "transliterate"


@dataclasses.dataclass(frozen=True)
class Segment:
    """A span of one audio file; `start_s`/`end_s` of `None` mean the whole file."""

    path: str
    start_s: float | None = None
    end_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One utterance before its audio is read.

    Attributes:
      utt_id: unique id within the corpus.
      speaker: speaker id (for TED-LIUM: the talk).
      text: the transcript, already checked by `clean_transcript`.
      segments: audio spans joined in order with `gap_s` seconds of silence between them.
      expected_rate: the corpus's native rate; other rates are reported when resampled.
      duration: seconds, when known without reading the audio.
      split: a split name given by the source (e.g. a manifest), else `None`.
      augment: applied to the joined audio when it is read (`augment.copies`), else `None`.
    """

    utt_id: str
    speaker: str
    text: str
    segments: tuple[Segment, ...]
    gap_s: float = 0.0
    expected_rate: int | None = audio.TARGET_RATE
    duration: float | None = None
    split: str | None = None
    augment: augment.Augment | None = None

    @property
    def path(self) -> str:
        return self.segments[0].path if self.segments else ""


@dataclasses.dataclass(frozen=True, eq=False)
class Utterance:
    """One utterance with audio.

    Attributes:
      utt_id, speaker, text: as in `Entry`.
      audio: float32 [samples] at `sample_rate`.
      duration: seconds (= samples / sample_rate).
      path: the (first) source file.
      sample_rate: Hz, 16 kHz unless `ReadOptions.target_rate` said otherwise.
      split: as in `Entry`.
    """

    utt_id: str
    speaker: str
    text: str
    audio: np.ndarray
    duration: float
    path: str
    sample_rate: int = audio.TARGET_RATE
    split: str | None = None


def make_entry(
    utt_id: str,
    speaker: str,
    transcript: str,
    segments: tuple[Segment, ...],
    *,
    options: ReadOptions,
    report: issues.InputReport,
    name: str | None = None,
    **fields,
) -> Entry | None:
    """Builds an `Entry` after checking its transcript; `None` (reported) if it is skipped."""
    label = name or f"{segments[0].path if segments else '?'} [{utt_id}]"
    clean = clean_transcript(transcript, name=label, non_ascii=options.non_ascii, report=report)
    if clean is None:
        return None
    return Entry(utt_id=utt_id, speaker=speaker, text=clean, segments=segments, **fields)


Fetch = Callable[[Segment], audio.Source]


def iter_utterances(
    entries: Iterable[Entry],
    *,
    options: ReadOptions = ReadOptions(),
    report: issues.InputReport | None = None,
    fetch: Fetch | None = None,
) -> Iterator[Utterance]:
    """Reads the audio of `entries` in order, yielding `Utterance`s; bad ones are reported.

    Args:
      fetch: maps a segment to something `audio.load` reads (path, bytes, file object);
        default: the segment's path. Whole files cut into several segments (TED-LIUM talks)
        are decoded once and sliced.
    """
    report = issues.default(report)
    cache = _FileCache(options=options, report=report, fetch=fetch)
    for entry in entries:
        utt = load_entry(entry, options=options, report=report, cache=cache)
        if utt is not None:
            yield utt


def load_entry(
    entry: Entry,
    *,
    options: ReadOptions = ReadOptions(),
    report: issues.InputReport | None = None,
    fetch: Fetch | None = None,
    cache: _FileCache | None = None,
) -> Utterance | None:
    """Reads one entry's audio; `None` if it was skipped (the reason is reported)."""
    report = issues.default(report)
    cache = cache or _FileCache(options=options, report=report, fetch=fetch)
    rate = options.target_rate
    parts = []
    for seg in entry.segments:
        part = cache.read(seg, entry)
        if part is None:
            return None
        parts.append(part)
    if not parts:
        report.issue(issues.Kind.MISSING_AUDIO, issues.Action.SKIPPED, entry.utt_id, "no segments")
        return None
    if len(parts) > 1:
        gap = np.zeros(round(entry.gap_s * rate), np.float32)
        joined = [parts[0]]
        for p in parts[1:]:
            joined += [gap, p]
        wave = np.concatenate(joined)
    else:
        wave = parts[0]
    name = f"{entry.path} [{entry.utt_id}]"
    if wave.shape[0] == 0:
        report.issue(issues.Kind.EMPTY_AUDIO, issues.Action.SKIPPED, name, "empty segment")
        return None
    if entry.augment is not None:
        wave = augment.apply(wave, rate, entry.augment)
    wave = audio.limit_length(
        wave,
        name=name,
        rate=rate,
        max_seconds=options.max_seconds,
        policy=options.too_long,
        report=report,
    )
    if wave is None:
        return None
    return Utterance(
        utt_id=entry.utt_id,
        speaker=entry.speaker,
        text=entry.text,
        audio=wave,
        duration=wave.shape[0] / rate,
        path=entry.path,
        sample_rate=rate,
        split=entry.split,
    )


def by_speaker(items: Iterable) -> dict[str, list]:
    """Groups entries or utterances by `.speaker` (speakers sorted, order kept within each)."""
    groups: dict[str, list] = collections.defaultdict(list)
    for item in items:
        groups[item.speaker].append(item)
    return {s: groups[s] for s in sorted(groups)}


def select_speakers(items: Iterable, speakers: Iterable[str]) -> list:
    """The entries or utterances whose speaker is in `speakers` (e.g. this host's shard)."""
    keep = set(speakers)
    return [item for item in items if item.speaker in keep]


class _FileCache:
    """Decodes each whole file once when it is cut into segments (keeps the last file only)."""

    def __init__(
        self, *, options: ReadOptions, report: issues.InputReport, fetch: Fetch | None
    ) -> None:
        self.options = options
        self.report = report
        self.fetch = fetch
        self._key: str | None = None
        self._audio: np.ndarray | None = None

    def _source(self, seg: Segment) -> audio.Source:
        return seg.path if self.fetch is None else self.fetch(seg)

    def read(self, seg: Segment, entry: Entry) -> np.ndarray | None:
        kwargs = dict(
            name=seg.path,
            target_rate=self.options.target_rate,
            expected_rate=entry.expected_rate,
            report=self.report,
        )
        if seg.start_s is None and seg.end_s is None:
            return audio.load(self._source(seg), **kwargs)
        if seg.path != self._key:
            self._key = seg.path
            self._audio = audio.load(self._source(seg), **kwargs)
        if self._audio is None:
            return None  # the file itself was reported once, when it failed to load
        rate = self.options.target_rate
        start = 0 if seg.start_s is None else max(0, round(seg.start_s * rate))
        stop = self._audio.shape[0] if seg.end_s is None else round(seg.end_s * rate)
        return self._audio[start:stop]
