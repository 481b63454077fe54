"""`transcribe` on inputs users really pass: stereo arrays, folders, damaged files."""

import functools

import numpy as np
import pytest
import soundfile

import pqm_jax
from pqm_jax import api
from pqm_jax.testing import toy


@functools.cache
def _model() -> api.WhisperModel:
    return toy.whisper_model()


def _tone(seconds=0.5):
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_soundfile_stereo_is_one_utterance_downmixed():
    mono = _tone()
    stereo = np.stack([mono, mono], axis=1)  # soundfile's [samples, channels]
    m = _model()
    with pytest.warns(pqm_jax.PQMWarning, match="2 channels .* averaged to mono"):
        out = m.transcribe(stereo, max_new_tokens=3)
    assert isinstance(out, str) or len(out) == 1
    assert out == m.transcribe(mono, max_new_tokens=3)


def test_channels_first_is_refused_with_the_fix():
    stereo = np.stack([_tone(), _tone()])  # [2, samples]
    with pytest.raises(ValueError, match=r"\[channels, samples\] pass x\.T"):
        _model().transcribe(stereo, max_new_tokens=3)


def test_a_folder_is_named_with_the_fix(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a folder: pass its files"):
        _model().transcribe(str(tmp_path), max_new_tokens=3)


def test_a_truncated_flac_names_the_file(tmp_path):
    path = tmp_path / "cut.flac"
    soundfile.write(path, _tone(2.0), 16_000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ValueError, match=r"cannot decode audio file .*cut\.flac"):
        _model().transcribe([str(path)], max_new_tokens=3)
