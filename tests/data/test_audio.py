"""Audio loading: resampling, validation and reporting of bad files."""

import numpy as np
import pytest
import soundfile

from pqm_jax.data import audio, issues


def test_resample_length_and_tone(tone):
    x = tone(1.0, rate=8000, freq=300)
    y = audio.resample(x, 8000, 16000)
    assert y.dtype == np.float32 and y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 300) <= 1  # 1 Hz bins at 1 s
    assert np.array_equal(audio.resample(x, 8000, 8000), x)
    assert audio.resample(tone(1.0, rate=22050), 22050, 16000).shape == (16000,)


def test_load_expected_rate_is_silent(tmp_path, tone, write_audio):
    path = write_audio(tmp_path / "a.flac", tone(0.5))
    y = audio.load(path)
    assert y.shape == (8000,) and y.dtype == np.float32


def test_wrong_rate_is_resampled_and_reported(tmp_path, tone, write_audio):
    path = write_audio(tmp_path / "a.wav", tone(0.5, rate=8000), rate=8000)
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match=r"unexpected sample rate: .*a\.wav.*resampled"):
        y = audio.load(path, report=report)
    assert y.shape == (8000,)
    assert report.count(issues.Kind.SAMPLE_RATE) == 1


def test_expected_other_rate_is_silent(tmp_path, tone, write_audio):
    path = write_audio(tmp_path / "a.wav", tone(0.5, rate=8000), rate=8000)
    assert audio.load(path, expected_rate=8000).shape == (8000,)
    assert audio.load(path, expected_rate=None).shape == (8000,)


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00garbage" * 10])
def test_corrupt_file_skipped(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match=r"corrupt audio: .*bad\.wav.*skipped"):
        assert audio.load(path, report=report) is None
    assert report.count(issues.Kind.CORRUPT_AUDIO) == 1


def test_corrupt_in_strict_mode_raises(tmp_path):
    path = tmp_path / "bad.flac"
    path.write_bytes(b"not audio")
    with pytest.raises(issues.InputError, match=r"bad\.flac"):
        audio.load(path, report=issues.InputReport(strict=True))


def test_empty_audio_skipped(tmp_path, write_audio):
    path = write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.warns(issues.InputWarning, match=r"empty audio: .*empty\.wav.*skipped"):
        assert audio.load(path) is None


def test_non_finite_samples_skipped(tmp_path, tone, write_audio):
    x = tone(0.1)
    x[10] = np.nan
    path = write_audio(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.warns(issues.InputWarning, match="non-finite"):
        assert audio.load(path) is None


def test_stereo_downmixed(tmp_path, tone, write_audio):
    x = tone(0.1)
    path = write_audio(tmp_path / "st.wav", np.stack([x, -x], axis=1))
    with pytest.warns(issues.InputWarning, match="downmixed"):
        y = audio.load(path)
    assert y.shape == x.shape and np.allclose(y, 0, atol=1e-4)


def test_bytes_source_and_span(tmp_path, tone, write_audio):
    path = write_audio(tmp_path / "a.flac", tone(2.0))
    y = audio.load(path.read_bytes(), start_s=0.5, end_s=1.25)
    assert y.shape == (12000,)
    data, rate = audio.decode(path, start_s=1.0)
    assert rate == 16000 and data.shape == (16000, 1)


def test_limit_length_policies(tone):
    x = tone(31.0)
    with pytest.warns(
        issues.InputWarning, match=r"utterance too long: u \(31.00 s > 30 s\); skipped"
    ):
        assert audio.limit_length(x, name="u") is None
    with pytest.warns(issues.InputWarning, match="truncated"):
        y = audio.limit_length(x, name="u", policy="truncate")
    assert y.shape == (480000,)
    assert audio.limit_length(x, name="u", max_seconds=None) is x
    with pytest.raises(ValueError, match="unknown length policy"):
        audio.limit_length(x, name="u", policy="drop")


def test_write_wav_roundtrip(tmp_path, tone):
    x = tone(0.2)
    audio.write_wav(tmp_path / "o.wav", x)
    y, rate = soundfile.read(tmp_path / "o.wav", dtype="float32")
    assert rate == 16000 and np.max(np.abs(y - x)) < 1e-4
    assert not list(tmp_path.glob("*.part"))
