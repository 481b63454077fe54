"""Log-mel features: equal to transformers' WhisperFeatureExtractor; padding and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from pqm_jax.data import features

transformers = pytest.importorskip("transformers")


def _audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_equals_the_extractors_numpy_path(n_mels):
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    clips = [_audio(n, i) for i, n in enumerate((8_000, 123_457, 480_000, 500_000))]
    got = features.log_mel_batch(clips, features.FeatureConfig(n_mels=n_mels))
    padded = np.stack([features.pad_or_trim(c) for c in clips])
    want = extractor._np_extract_fbank_features(padded, "cpu")
    assert got.shape == want.shape == (4, n_mels, 3000) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_close_to_the_extractors_default_call():
    """The extractor's public call (its torch STFT when torch is installed) differs by float32
    rounding only."""
    extractor = transformers.WhisperFeatureExtractor()
    clips = [_audio(40_000, 1), _audio(480_000, 2)]
    want = extractor(clips, sampling_rate=16_000, return_tensors="np").input_features
    np.testing.assert_allclose(features.log_mel_batch(clips), want, rtol=0, atol=1e-4)


def test_padding_and_truncation():
    clip = _audio(50_000)
    short = features.log_mel(clip)
    padded = features.log_mel(np.concatenate([clip, np.zeros(100_000, np.float32)]))
    np.testing.assert_array_equal(short, padded)  # zero padding to 30 s is implicit
    long = _audio(600_000, 3)
    np.testing.assert_array_equal(features.log_mel(long), features.log_mel(long[:480_000]))
    assert short.shape == (80, 3000) and short.flags.c_contiguous
    assert features.pad_or_trim(np.ones(3)).shape == (480_000,)
    assert features.pad_or_trim(np.ones((2, 500_000)), 7).shape == (2, 7)


def test_batch_rows_are_independent():
    clips = [_audio(16_000, 0), _audio(200_000, 1), np.zeros(0, np.float32)]
    batch = features.log_mel_batch(clips)
    for row, clip in zip(batch, clips):
        np.testing.assert_array_equal(row, features.log_mel(clip))
    assert features.log_mel_batch([]).shape == (0, 80, 3000)
    with pytest.raises(ValueError, match=r"utterance 0 has shape \(10, 2\)"):
        features.log_mel_batch([np.zeros((10, 2))])


def test_silence_and_range():
    silent = features.log_mel(np.zeros(16_000, np.float32))
    np.testing.assert_allclose(silent, (-10 + 4) / 4)  # log10 floor 1e-10
    loud = features.log_mel(_audio(160_000))
    assert loud.max() - loud.min() <= 2.0 + 1e-6  # dynamic range clamped to 8 decades / 4


def test_n_frames():
    assert features.n_frames(16_000) == 100
    assert features.n_frames(16_001) == 101
    assert features.n_frames(10**7) == 3000
    assert features.mel_filters(80).shape == (201, 80)
