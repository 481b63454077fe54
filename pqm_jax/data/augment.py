"""Waveform augmentation: speed perturbation, telephone band, reverberation, additive noise.

An augmented utterance is an ordinary `corpora.Entry` with an `Augment` attached: its id gains a
`~a{k}` suffix, the feature store keys on the augmentation too, and `corpora.load_entry` applies
it after decoding. Parameters are drawn per entry from the data seed (`copies`), so a run renders
the same copies after a restart and the stage-2 pool is reproducible. Only training parts of the
pool are expanded: dev and target speakers' audio is never altered.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.signal

# What `DataSpec.augment` may name.
KINDS = ("speed", "narrowband", "reverb", "noise")


@dataclasses.dataclass(frozen=True)
class Augment:
    """One utterance's augmentation (the identity by default).

    Attributes:
      speed: resampling factor (1.1 = 10% faster and higher, Kaldi-style speed perturbation).
      narrowband_hz: low-pass cut-off (0 = none): 4,000 makes 16 kHz audio sound like 8 kHz
        recordings (FSDD's) resampled to 16 kHz.
      rt60_s: reverberation time of a synthetic exponentially decaying room response (0 = none).
      snr_db: additive coloured noise at this signal-to-noise ratio (None = none).
      seed: the noise and room draws.
    """

    speed: float = 1.0
    narrowband_hz: float = 0.0
    rt60_s: float = 0.0
    snr_db: float | None = None
    seed: int = 0

    def tag(self) -> str:
        """A short stable description (part of the feature cache key)."""
        return (
            f"s{self.speed:.3f}-n{self.narrowband_hz:.0f}-r{self.rt60_s:.3f}-"
            f"snr{'none' if self.snr_db is None else f'{self.snr_db:.1f}'}-{self.seed}"
        )


def apply(wave: np.ndarray, rate: int, aug: Augment) -> np.ndarray:
    """`wave` [samples] float32 at `rate` with `aug` applied in a fixed order: speed, band,
    room, noise (noise last, as a microphone adds it). Peak-limited to [-1, 1]."""
    rng = np.random.default_rng(aug.seed)
    out = np.asarray(wave, np.float32)
    if aug.speed != 1.0:
        out = speed(out, aug.speed)
    if aug.narrowband_hz > 0:
        out = lowpass(out, rate, aug.narrowband_hz)
    if aug.rt60_s > 0:
        out = reverb(out, rate, aug.rt60_s, rng=rng)
    if aug.snr_db is not None:
        out = add_noise(out, aug.snr_db, rng=rng)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    return (out / peak if peak > 1.0 else out).astype(np.float32)


def speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Plays `wave` `factor` times faster (length / factor, pitch x factor), by resampling."""
    n = max(1, round(wave.shape[0] / factor))
    return scipy.signal.resample(wave, n).astype(np.float32)


def lowpass(wave: np.ndarray, rate: int, cutoff_hz: float) -> np.ndarray:
    """Zero-phase 8th-order Butterworth low-pass at `cutoff_hz`."""
    if cutoff_hz >= rate / 2 or wave.shape[0] < 64:
        return wave
    sos = scipy.signal.butter(8, cutoff_hz, fs=rate, output="sos")
    return scipy.signal.sosfiltfilt(sos, wave).astype(np.float32)


def room_response(rate: int, rt60_s: float, *, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: the direct path, then Gaussian noise decaying by 60 dB
    over `rt60_s` (energy-normalised)."""
    n = max(2, int(rate * rt60_s))
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000): -60 dB at rt60
    tail[0] = 0.0
    ir = np.concatenate([[1.0], 0.3 * tail[1:]])
    return (ir / np.sqrt(np.sum(ir**2))).astype(np.float32)


def reverb(wave: np.ndarray, rate: int, rt60_s: float, *, rng: np.random.Generator) -> np.ndarray:
    """`wave` convolved with `room_response`, cut to its own length (the tail is dropped)."""
    ir = room_response(rate, rt60_s, rng=rng)
    return scipy.signal.fftconvolve(wave, ir)[: wave.shape[0]].astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, *, rng: np.random.Generator) -> np.ndarray:
    """Adds noise at `snr_db` against the signal's mean power: white noise, randomly tilted
    towards pink (the spectrum's slope is drawn), as room and line noise vary."""
    n = wave.shape[0]
    power = float(np.mean(wave.astype(np.float64) ** 2))
    if n == 0 or power == 0.0:
        return wave
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(spec.shape[0]), 1.0)
    spec /= f ** (rng.uniform(0.0, 1.0) / 2)  # slope 0 (white) .. 1 (pink)
    noise = np.fft.irfft(spec, n)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (wave + noise).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Policy:
    """How copies are drawn (`DataSpec.augment`, `augment_copies`, `augment_ranges`).

    Attributes:
      kinds: which of `KINDS` each copy gets.
      copies: augmented copies per training utterance (the original is kept as well).
      speeds: speed factors to draw from (Kaldi's 0.9 / 1.1; 1.0 leaves the tempo).
      snr_db: (low, high) uniform range of the noise SNR.
      rt60_s: (low, high) uniform range of the reverberation time.
      narrowband_hz: cut-off of "narrowband".
      seed: the data seed.
    """

    kinds: tuple[str, ...] = ()
    copies: int = 0
    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    snr_db: tuple[float, float] = (10.0, 30.0)
    rt60_s: tuple[float, float] = (0.1, 0.5)
    narrowband_hz: float = 4000.0
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"data.augment: unknown {unknown}; known: {', '.join(KINDS)}")
        if self.copies < 0:
            raise ValueError(f"data.augment_copies must be >= 0, got {self.copies}")
        if self.copies and not self.kinds:
            raise ValueError("data.augment_copies > 0 needs data.augment to name what to apply")

    def draw(self, utt_id: str, k: int) -> Augment:
        """Copy `k` of utterance `utt_id` (deterministic for the seed, the id and k)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(utt_id.encode()), k])
        kinds = set(self.kinds)
        return Augment(
            speed=float(rng.choice(self.speeds)) if "speed" in kinds else 1.0,
            narrowband_hz=self.narrowband_hz if "narrowband" in kinds else 0.0,
            rt60_s=float(rng.uniform(*self.rt60_s)) if "reverb" in kinds else 0.0,
            snr_db=float(rng.uniform(*self.snr_db)) if "noise" in kinds else None,
            seed=int(rng.integers(2**31)),
        )


def copies(entries: Sequence, policy: Policy) -> list:
    """`entries` followed by `policy.copies` augmented copies of each (ids `{id}~a{k}`)."""
    out = list(entries)
    for k in range(1, policy.copies + 1):
        out += [
            dataclasses.replace(e, utt_id=f"{e.utt_id}~a{k}", augment=policy.draw(e.utt_id, k))
            for e in entries
        ]
    return out
