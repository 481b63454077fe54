"""A damaged audio file, once fixed, is read again: the feature cache is keyed on the file."""

import os

import numpy as np
import pytest

from pqm_jax.data import corpora, feature_store, issues


def test_a_fixed_file_is_featurised_not_skipped_forever(tmp_path, tone, write_audio):
    wav = tmp_path / "bad.wav"
    wav.write_bytes(b"RIFF....WAVEfmt not really audio")
    entry = corpora.Entry(
        utt_id="u1", speaker="s", text="one", segments=(corpora.Segment(str(wav)),)
    )
    store = feature_store.FeatureStore(tmp_path / "features", window_s=1.0, n_mels=80)
    with pytest.warns(issues.InputWarning, match="bad.wav"):
        assert store.get(entry) is None
    assert store.get(entry) is None  # still damaged: still skipped
    again = feature_store.FeatureStore(tmp_path / "features", window_s=1.0, n_mels=80)
    with pytest.warns(issues.InputWarning, match=r"bad\.wav.*file unchanged since"):
        assert again.get(entry) is None  # a rerun names the cached skip again
    write_audio(wav, tone(0.5))
    os.utime(wav, ns=(1, 10**18))  # a fixed file, whatever the clock's resolution
    mel = store.get(entry)
    assert mel is not None and mel.shape == (80, 100) and np.isfinite(mel).all()
