"""ESPnet Conformer AED import, on state dicts written here by a PyTorch ESPnet-style model."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from references import conformer_torch as R
from references.conformer_torch import torch

from pqm_jax.models.conformer import espnet
from pqm_jax.models.conformer import model as conformer


def _state_dict(config, seed: int = 0) -> dict:
    return R.reference_model(config, seed).state_dict()


@pytest.mark.parametrize("options", [{}, {"conv_norm": "layer_norm", "macaron": False}])
def test_config_from_state_dict(options):
    c = R.small_config(**options)
    got = espnet.config_from_state_dict(_state_dict(c), n_mels=c.n_mels, decoder_heads=2)
    assert got == c


def test_round_trip_is_exact():
    c = R.small_config()
    sd = _state_dict(c)
    params = espnet.from_state_dict(sd, c)
    back = espnet.to_state_dict(params, c)
    want = {k: v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert sorted(back) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # A fresh torch model takes the written tensors; only the BatchNorm step counters are absent.
    result = R.Model(c).load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)


def test_pth_file_with_module_prefix_and_global_mvn(tmp_path):
    """A checkpoint as ESPnet2 writes it (`torch.save(model.state_dict())`), with GlobalMVN
    statistics and DataParallel's `module.` prefix; its outputs match the reference."""
    c = R.small_config()
    model = R.reference_model(c, seed=1)
    mean, std = torch.randn(c.n_mels), 0.5 + torch.rand(c.n_mels)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd |= {"module.normalize.mean": mean, "module.normalize.std": std}
    torch.save(sd, tmp_path / "valid.acc.ave.pth")
    config, params = espnet.load(tmp_path / "valid.acc.ave.pth", n_mels=c.n_mels, decoder_heads=2)
    assert config == c
    feats = np.random.default_rng(0).standard_normal((1, 33, c.n_mels)).astype(np.float32)
    with torch.no_grad():
        x = (torch.from_numpy(feats) - mean) / std
        want, _ = model.encoder(x, torch.tensor([33]))
    got, _ = conformer.encode(params, jnp.asarray(feats), jnp.array([33]), config=config)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5, rtol=1e-5)


def test_missing_unexpected_and_misshapen_tensors_raise():
    c = R.small_config()
    sd = {k: v.numpy() for k, v in _state_dict(c).items()}
    missing = dict(sd)
    del missing["encoder.encoders.1.self_attn.linear_pos.weight"]
    with pytest.raises(ValueError, match="lacks 1 tensors"):
        espnet.from_state_dict(missing, c)
    with pytest.raises(ValueError, match="unexpected"):
        espnet.from_state_dict(sd | {"lm.weight": np.zeros(3)}, c)
    with pytest.raises(ValueError, match="lacks"):  # a third encoder layer has no tensors
        espnet.from_state_dict(sd, R.small_config(encoder_layers=3))
    with pytest.raises(ValueError, match="shape"):
        espnet.from_state_dict(sd, R.small_config(encoder_ffn=64))


def test_unsupported_subsampling_and_n_mels_raise():
    c = R.small_config()
    sd = {k: v.numpy() for k, v in _state_dict(c).items()}
    with pytest.raises(ValueError, match="n_mels"):
        espnet.config_from_state_dict(sd, n_mels=80)
    sd["encoder.embed.conv.2.weight"] = np.zeros((32, 32, 5, 5), np.float32)  # conv2d6
    with pytest.raises(ValueError, match="conv2d"):
        espnet.config_from_state_dict(sd, n_mels=c.n_mels)
    with pytest.raises(ValueError, match="not an ESPnet Conformer"):
        espnet.config_from_state_dict({"encoder.embed.conv.0.weight": np.zeros((4, 1, 3, 3))})
