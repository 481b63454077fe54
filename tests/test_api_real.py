"""`load_model(...).transcribe` with the real packaged weights on a real FSDD recording (slow)."""

from __future__ import annotations

import pytest

import pqm_jax
from pqm_jax import resources
from pqm_jax.text import normalize

pytestmark = pytest.mark.slow


def _recording(name: str) -> str:
    path = resources.shared_data_dir() / "fsdd" / "recordings" / f"{name}.wav"
    if not path.is_file():
        pytest.skip(f"FSDD not found ({path}; set $PQM_SHARED_DATA)")
    return str(path)  # 8 kHz: transcribe resamples files itself


def _load(name: str, **kwargs):
    try:
        return pqm_jax.load_model(name, **kwargs)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize(("name", "quant"), [("tiny.en", None), ("tiny.en", "nf4"), ("base", None)])
def test_transcribes_a_spoken_digit(name, quant):
    model = _load(name, quant=quant)
    clips = [_recording("7_jackson_32"), _recording("3_theo_5")]
    out = model.transcribe(clips, batch_size=2)
    assert [normalize.normalize_digits(t) for t in out] == ["seven", "three"]
