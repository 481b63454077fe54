"""Whisper's log-mel spectrogram in vectorised numpy (no torch): [n_mels, 3000] per 30 s window.

Numerics follow `transformers.WhisperFeatureExtractor` (and openai-whisper): audio padded with
zeros or truncated to 30 s at 16 kHz; centred STFT (reflect padding, periodic Hann window of
400, hop 160); power spectrum through the Slaney mel filter bank (80 or 128 bins, 0-8 kHz); the
last frame dropped; log10 floored at 1e-10; values below (max - 8) raised to it, per window;
then (x + 4) / 4. The mel filter bank is the extractor's own.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
CHUNK_S = 30
N_SAMPLES = CHUNK_S * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP  # 3000


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Log-mel settings; only `n_mels` (80, or 128 for large-v3) differs between Whispers."""

    n_mels: int = 80
    n_samples: int = N_SAMPLES


@functools.cache
def mel_filters(n_mels: int = 80) -> np.ndarray:
    """Slaney-normalised mel filter bank [n_fft // 2 + 1, n_mels] (float64), the extractor's."""
    from transformers import audio_utils  # lazy: transformers is slow to import

    return audio_utils.mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )


@functools.cache
def _window() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann, as torch.hann_window


def pad_or_trim(audio: np.ndarray, n_samples: int = N_SAMPLES) -> np.ndarray:
    """`audio` [..., samples] zero-padded or cut on the right to `n_samples` (float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[-1] >= n_samples:
        return audio[..., :n_samples]
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, n_samples - audio.shape[-1])]
    return np.pad(audio, pad)


def log_mel_windows(windows: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Log-mel of equal-length windows [B, samples] (already padded) -> [B, n_mels, samples // 160]
    float32."""
    windows = np.asarray(windows, dtype=np.float64)
    padded = np.pad(windows, [(0, 0), (N_FFT // 2, N_FFT // 2)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT, axis=-1)[:, ::HOP]
    frames = frames[:, :-1]  # the extractor drops the last STFT frame
    spectrum = np.fft.rfft(frames * _window(), axis=-1)  # [B, frames, freq]
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ mel_filters(n_mels)  # [B, frames, n_mels]
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
    return np.ascontiguousarray(((log + 4.0) / 4.0).transpose(0, 2, 1), dtype=np.float32)


def log_mel(audio: np.ndarray, config: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """One utterance, mono float32 16 kHz [samples] -> log-mel [n_mels, 3000] float32."""
    return log_mel_windows(pad_or_trim(audio, config.n_samples)[None], config.n_mels)[0]


def log_mel_batch(
    audios: Sequence[np.ndarray], config: FeatureConfig = FeatureConfig()
) -> np.ndarray:
    """Utterances of any lengths (mono 16 kHz) -> [B, n_mels, 3000] float32, each padded or
    truncated to its own 30 s window (as the extractor does)."""
    if len(audios) == 0:
        return np.zeros((0, config.n_mels, config.n_samples // HOP), np.float32)
    for i, a in enumerate(audios):
        if np.ndim(a) != 1:
            raise ValueError(f"utterance {i} has shape {np.shape(a)}; expected mono [samples]")
    windows = np.stack([pad_or_trim(a, config.n_samples) for a in audios])
    return log_mel_windows(windows, config.n_mels)


def n_frames(n_samples: int) -> int:
    """Frames of real (unpadded) audio in a window: `ceil(samples / 160)`, capped at 3000."""
    return min(-(-int(n_samples) // HOP), N_FRAMES)
