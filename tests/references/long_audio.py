"""Minutes of real speech with known pauses: FSDD digits of one speaker, joined into phrases.

`phrases(root, ...)` returns 16 kHz audio made of phrases of 3-5 digits (0.15 s apart, as the
FSDD protocol joins them) separated by pauses (`pause_s`, 1.5-2.5 s), the reference words, and the pause
intervals (seconds), so that long-form segment times can be checked against the silences.
"""

from __future__ import annotations

import pathlib

import numpy as np

from pqm_jax.data import audio, fsdd
from pqm_jax.text import transcripts

RATE = 16_000


def phrases(
    root: pathlib.Path,
    *,
    speaker: str,
    seconds: float,
    seed: int = 0,
    pause_s: tuple[float, float] = (1.5, 2.5),
):
    """(audio [samples] float32, reference words, pauses [(start_s, end_s)], word spans
    [(start_s, end_s)] of each spoken digit) of about `seconds`."""
    recs = [r for r in fsdd.list_recordings(root) if r.speaker == speaker]
    rng = np.random.default_rng(seed)
    parts, words, pauses, spans, t = [], [], [], [], 0.0
    lead = np.zeros(round(0.5 * RATE), np.float32)
    parts.append(lead)
    pauses.append((0.0, 0.5))
    t = 0.5
    while t < seconds:
        for k in range(int(rng.integers(3, 6))):
            r = recs[int(rng.integers(len(recs)))]
            data, rate = audio.decode(r.path)
            clip = audio.resample(data.mean(axis=1), rate)
            if k:
                parts.append(np.zeros(round(0.15 * RATE), np.float32))
                t += 0.15
            parts.append(clip)
            spans.append((t, t + len(clip) / RATE))
            t += len(clip) / RATE
            words.append(transcripts.DIGIT_WORDS[r.digit])
        gap = float(rng.uniform(*pause_s))
        parts.append(np.zeros(round(gap * RATE), np.float32))
        pauses.append((t, t + gap))
        t += gap
    return np.concatenate(parts), words, pauses, spans


def distance_to_pause(time_s: float, pauses) -> float:
    """Seconds from `time_s` to the nearest pause (0 inside one)."""
    return min(max(a - time_s, 0.0, time_s - b) for a, b in pauses)
