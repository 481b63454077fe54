"""Audio decoding, resampling and validation (soundfile + scipy.signal.resample_poly).

Everything returns mono float32 in [-1, 1] at the requested rate; problems go through an
`issues.InputReport` and yield `None` (skipped) instead of an exception.
"""

from __future__ import annotations

import errno
import io
import math
import os
import pathlib
import shutil
from typing import BinaryIO

import numpy as np
import scipy.signal
import soundfile

from pqm_jax.data import issues

TARGET_RATE = 16_000
Source = str | os.PathLike | bytes | BinaryIO


def resample(audio: np.ndarray, orig_rate: int, target_rate: int = TARGET_RATE) -> np.ndarray:
    """Polyphase resampling of `audio` [samples] from `orig_rate` to `target_rate` (float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_rate == target_rate or audio.size == 0:
        return audio
    g = math.gcd(int(orig_rate), int(target_rate))
    out = scipy.signal.resample_poly(audio, target_rate // g, orig_rate // g, axis=0)
    return out.astype(np.float32)


def decode(
    source: Source, *, start_s: float | None = None, end_s: float | None = None
) -> tuple[np.ndarray, int]:
    """Decodes a file (path, bytes or file object) to float32 [samples, channels] and its rate.

    `start_s`/`end_s` read only that span (seconds). Raises on undecodable input.
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    with soundfile.SoundFile(source) as f:
        rate = f.samplerate
        start = 0 if start_s is None else max(0, round(start_s * rate))
        stop = f.frames if end_s is None else min(f.frames, round(end_s * rate))
        if start:
            f.seek(min(start, f.frames))
        frames = max(0, stop - start)
        data = f.read(frames, dtype="float32", always_2d=True)
    return data, rate


def load(
    source: Source,
    *,
    name: str | None = None,
    target_rate: int = TARGET_RATE,
    expected_rate: int | None = TARGET_RATE,
    start_s: float | None = None,
    end_s: float | None = None,
    report: issues.InputReport | None = None,
) -> np.ndarray | None:
    """Loads mono float32 audio [samples] at `target_rate`, or `None` if it had to be skipped.

    Args:
      source: path, bytes or binary file object.
      name: how to name the source in warnings (defaults to the path).
      expected_rate: the rate this corpus is meant to have; any other rate is resampled and
        reported. `None` accepts any rate silently (it is still resampled).
      start_s, end_s: read only this span (seconds).
      report: where problems go (warned + counted, or raised in strict mode).
    """
    report = issues.default(report)
    label = name if name is not None else _label(source)
    try:
        data, rate = decode(source, start_s=start_s, end_s=end_s)
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError, EOFError) as e:
        report.issue(issues.Kind.CORRUPT_AUDIO, issues.Action.SKIPPED, label, _short(e))
        return None
    if data.shape[0] == 0:
        report.issue(issues.Kind.EMPTY_AUDIO, issues.Action.SKIPPED, label, "0 samples")
        return None
    if not np.all(np.isfinite(data)):
        report.issue(issues.Kind.CORRUPT_AUDIO, issues.Action.SKIPPED, label, "non-finite samples")
        return None
    if data.shape[1] > 1:
        report.issue(
            issues.Kind.MULTICHANNEL, issues.Action.DOWNMIXED, label, f"{data.shape[1]} channels"
        )
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if expected_rate is not None and rate != expected_rate:
        report.issue(
            issues.Kind.SAMPLE_RATE,
            issues.Action.RESAMPLED,
            label,
            f"{rate} Hz, expected {expected_rate} Hz, resampled to {target_rate} Hz",
        )
    return resample(mono, rate, target_rate)


def limit_length(
    audio: np.ndarray,
    *,
    name: str,
    rate: int = TARGET_RATE,
    max_seconds: float | None = 30.0,
    policy: str = "skip",
    report: issues.InputReport | None = None,
) -> np.ndarray | None:
    """Applies the length limit to `audio` [samples]: returns it, a truncated copy, or `None`.

    `policy` is "skip" (the transcript would no longer match truncated audio) or "truncate".
    """
    if max_seconds is None or audio.shape[0] <= round(max_seconds * rate):
        return audio
    report = issues.default(report)
    detail = f"{audio.shape[0] / rate:.2f} s > {max_seconds:g} s"
    if policy == "truncate":
        report.issue(issues.Kind.TOO_LONG, issues.Action.TRUNCATED, name, detail)
        return audio[: round(max_seconds * rate)]
    if policy != "skip":
        raise ValueError(f"unknown length policy {policy!r}; use 'skip' or 'truncate'")
    report.issue(issues.Kind.TOO_LONG, issues.Action.SKIPPED, name, detail)
    return None


def write_wav(path: str | os.PathLike, audio: np.ndarray, rate: int = TARGET_RATE) -> None:
    """Writes float32 `audio` [samples] as 16-bit PCM WAV (atomically: temp file + rename)."""
    tmp = f"{os.fspath(path)}.part"
    try:
        soundfile.write(tmp, np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    except soundfile.LibsndfileError as e:  # "System error." when the disk is full
        folder = pathlib.Path(tmp).parent
        if shutil.disk_usage(folder).free < 2 * audio.size + (1 << 16):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path)) from e
        raise
    os.replace(tmp, path)


def _label(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return getattr(source, "name", None) or "<in-memory audio>"


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]
