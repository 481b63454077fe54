"""A tiny random Hugging Face Whisper (PyTorch) shared by the converter tests; nothing downloads."""

from __future__ import annotations

import numpy as np
import pytest

from pqm_jax.models.whisper import hf
from pqm_jax.models.whisper import model as whisper


def _tiny_config() -> whisper.WhisperConfig:
    """Small and asymmetric (2 encoder / 3 decoder layers, different FFN widths)."""
    return whisper.WhisperConfig(
        n_mels=16,
        vocab_size=320,
        d_model=64,
        encoder_layers=2,
        decoder_layers=3,
        encoder_heads=4,
        decoder_heads=4,
        encoder_ffn=128,
        decoder_ffn=96,
        max_source_positions=60,
        max_target_positions=64,
    )


def _tiny_hf_model():
    """`WhisperForConditionalGeneration` for `_tiny_config()` with every tensor random (biases and
    norms too, so a swapped mapping cannot hide behind zero/one initialisation)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids = {"pad_token_id": 300, "bos_token_id": 300, "eos_token_id": 300}
    hf_config = transformers.WhisperConfig(
        **hf.hf_config_dict(_tiny_config(), decoder_start_token_id=301, **ids)
    )
    model = transformers.WhisperForConditionalGeneration(hf_config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="session")
def tiny_config() -> whisper.WhisperConfig:
    return _tiny_config()


@pytest.fixture(scope="session")
def hf_model():
    return _tiny_hf_model()


@pytest.fixture(scope="session")
def hf_state(hf_model) -> dict[str, np.ndarray]:
    """The model's state dict as float32 numpy arrays (tied `proj_out` included)."""
    return {k: v.detach().numpy().copy() for k, v in hf_model.state_dict().items()}
