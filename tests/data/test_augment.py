"""Waveform augmentation: each transform does what it says, copies are reproducible and keyed."""

import dataclasses

import numpy as np
import pytest

from pqm_jax import errors
from pqm_jax.data import augment, corpora, feature_store, spec

RATE = 16_000


def _noise(n=RATE, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32) * 0.1


def _band_energy(wave, lo_hz, hi_hz):
    spec_ = np.abs(np.fft.rfft(wave)) ** 2
    f = np.fft.rfftfreq(wave.shape[0], 1 / RATE)
    return float(spec_[(f >= lo_hz) & (f < hi_hz)].sum())


def test_the_identity_changes_nothing():
    w = _noise()
    np.testing.assert_array_equal(augment.apply(w, RATE, augment.Augment()), w)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_scales_length_and_pitch(factor):
    t = np.arange(RATE) / RATE
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = augment.speed(tone, factor)
    assert out.shape[0] == round(RATE / factor)
    peak_hz = np.argmax(np.abs(np.fft.rfft(out))) * RATE / out.shape[0]
    assert abs(peak_hz - 440 * factor) < 3


def test_narrowband_leaves_nothing_above_the_cut_off():
    w = _noise()
    out = augment.lowpass(w, RATE, 4000)
    assert _band_energy(out, 4600, 8000) < 1e-4 * _band_energy(w, 4600, 8000)
    assert _band_energy(out, 100, 3000) > 0.95 * _band_energy(w, 100, 3000)


@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_noise_is_added_at_the_asked_snr(snr):
    w = np.sin(np.arange(RATE) / 7).astype(np.float32) * 0.3
    out = augment.add_noise(w, snr, rng=np.random.default_rng(1))
    noise = out - w
    measured = 10 * np.log10(np.mean(w.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(measured - snr) < 0.05


def test_room_response_is_normalised_and_decays_by_rt60():
    ir = augment.room_response(RATE, 0.4, rng=np.random.default_rng(0))
    assert ir.shape[0] == int(RATE * 0.4) and ir[0] > 0
    np.testing.assert_allclose(np.sum(ir.astype(np.float64) ** 2), 1.0, rtol=1e-5)
    early, late = ir[1 : RATE // 50], ir[-(RATE // 50) :]
    drop_db = 10 * np.log10(np.mean(early**2) / np.mean(late**2))
    assert 45 < drop_db < 65  # -60 dB over the whole response, measured on 20 ms ends
    w = _noise()
    assert augment.reverb(w, RATE, 0.4, rng=np.random.default_rng(0)).shape == w.shape


def test_copies_are_reproducible_distinct_and_named():
    entry = corpora.Entry("u1", "spk", "one two", (corpora.Segment("/x.wav"),))
    policy = augment.Policy(kinds=augment.KINDS, copies=3, seed=7)
    out = augment.copies([entry], policy)
    assert [e.utt_id for e in out] == ["u1", "u1~a1", "u1~a2", "u1~a3"]
    assert out[0].augment is None and len({e.augment for e in out[1:]}) == 3
    assert out == augment.copies([entry], policy)
    assert out != augment.copies([entry], dataclasses.replace(policy, seed=8))
    for e in out[1:]:
        assert e.augment.speed in policy.speeds and e.augment.narrowband_hz == 4000
        assert 10 <= e.augment.snr_db <= 30 and 0.1 <= e.augment.rt60_s <= 0.5


def test_only_named_kinds_are_drawn():
    a = augment.Policy(kinds=("noise",), copies=1).draw("u", 1)
    assert (a.speed, a.narrowband_hz, a.rt60_s) == (1.0, 0.0, 0.0) and a.snr_db is not None


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(augment=("echo",)), "unknown ['echo']"),
        (dict(augment_copies=2), "needs data.augment"),
        (dict(augment=("noise",), augment_copies=-1), ">= 0"),
    ],
)
def test_bad_settings_are_config_errors(kw, words):
    with pytest.raises(errors.ConfigError, match=words.replace("[", r"\[")):
        spec.DataSpec(**kw)


def test_an_augmented_entry_is_read_altered_and_cached_apart(tmp_path):
    from pqm_jax.data import audio

    path = tmp_path / "a.wav"
    audio.write_wav(path, _noise(), RATE)
    plain = corpora.Entry("u", "s", "one", (corpora.Segment(str(path)),), expected_rate=RATE)
    noisy = augment.copies([plain], augment.Policy(kinds=("noise", "reverb"), copies=1))[1]
    a, b = corpora.load_entry(plain), corpora.load_entry(noisy)
    assert a.audio.shape == b.audio.shape and not np.allclose(a.audio, b.audio)
    np.testing.assert_array_equal(b.audio, augment.apply(a.audio, RATE, noisy.augment))
    store = feature_store.FeatureStore(tmp_path / "cache", window_s=2.0, n_mels=80)
    assert store.path(plain) != store.path(noisy)
    assert store.path(noisy) != store.path(dataclasses.replace(noisy, augment=augment.Augment()))
