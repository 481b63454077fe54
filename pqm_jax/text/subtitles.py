"""Transcript writers: plain text, SubRip (.srt), WebVTT (.vtt) and JSON, as openai-whisper's
`--output_format` writes them (one cue per segment, times as HH:MM:SS,mmm / HH:MM:SS.mmm)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

FORMATS = ("txt", "srt", "vtt", "json")


class Timed(Protocol):
    start: float
    end: float
    text: str


def timestamp(seconds: float, *, marker: str = ",", hours: bool = True) -> str:
    """`3725.5` -> "01:02:05,500" (SRT) or "01:02:05.500" (VTT, marker "."); millisecond
    rounding, never negative; `hours=False` leaves out a zero hour (VTT allows it)."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    head = f"{h:02d}:" if hours or h else ""
    return f"{head}{m:02d}:{s:02d}{marker}{ms:03d}"


def _cues(segments: Sequence[Timed]) -> list[Timed]:
    return [s for s in segments if s.text.strip()]


def srt(segments: Sequence[Timed]) -> str:
    """SubRip: numbered cues `1\\n00:00:00,000 --> 00:00:02,500\\ntext\\n`."""
    blocks = [
        f"{i}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{s.text.strip()}\n"
        for i, s in enumerate(_cues(segments), 1)
    ]
    return "\n".join(blocks)


def vtt(segments: Sequence[Timed]) -> str:
    """WebVTT: a `WEBVTT` header, then `00:00.000 --> 00:02.500\\ntext` cues."""
    blocks = [
        f"{timestamp(s.start, marker='.', hours=False)} --> "
        f"{timestamp(s.end, marker='.', hours=False)}\n{s.text.strip()}\n"
        for s in _cues(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def txt(segments: Sequence[Timed]) -> str:
    """One line per segment (openai-whisper's .txt)."""
    return "".join(s.text.strip() + "\n" for s in _cues(segments))


def as_json(segments: Sequence[Any], *, text: str, extra: Mapping[str, Any] | None = None) -> str:
    """{"text", "segments": [{id, start, end, text, tokens, avg_logprob, ...}], **extra}."""
    rows = []
    for i, s in enumerate(segments):
        row = {"id": i, "start": s.start, "end": s.end, "text": s.text}
        for name in ("tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
            if hasattr(s, name):
                value = getattr(s, name)
                row[name] = list(value) if name == "tokens" else value
        if getattr(s, "words", ()):
            row["words"] = [{"start": w.start, "end": w.end, "word": w.word} for w in s.words]
        rows.append(row)
    return json.dumps({"text": text, "segments": rows, **(extra or {})}, indent=1) + "\n"


def render(fmt: str, segments: Sequence[Any], *, text: str, extra=None) -> str:
    """The file body of `fmt` (one of `FORMATS`)."""
    if fmt == "txt":
        return txt(segments) if segments else text + "\n"
    if fmt == "srt":
        return srt(segments)
    if fmt == "vtt":
        return vtt(segments)
    if fmt == "json":
        return as_json(segments, text=text, extra=extra)
    raise ValueError(f"output format {fmt!r} is not one of {', '.join(FORMATS)}")
