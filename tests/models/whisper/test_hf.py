"""HF Whisper state dicts <-> params: layout, round trips, checkpoint folders, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pqm_jax.models.whisper import hf
from pqm_jax.models.whisper import model as whisper

torch = pytest.importorskip("torch")


def test_layout_matches_the_contract(hf_state, tiny_config):
    config = tiny_config
    params = hf.from_state_dict(hf_state, config)
    enc, dec = params["encoder"], params["decoder"]
    assert enc["conv1"]["kernel"].shape == (3, 16, 64)
    np.testing.assert_array_equal(
        enc["conv1"]["kernel"][2, 5, 7], hf_state["model.encoder.conv1.weight"][7, 5, 2]
    )
    q = enc["layers_1"]["self_attn"]["q_proj"]
    np.testing.assert_array_equal(
        q["kernel"], hf_state["model.encoder.layers.1.self_attn.q_proj.weight"].T
    )
    assert set(enc["layers_0"]["self_attn"]["k_proj"]) == {"kernel"}
    assert set(dec["layers_2"]) == {
        "self_attn_layer_norm", "self_attn", "encoder_attn_layer_norm", "encoder_attn",
        "final_layer_norm", "fc1", "fc2",
    }  # fmt: skip
    assert dec["layers_0"]["fc1"]["kernel"].shape == (64, 96)
    assert enc["layers_0"]["fc1"]["kernel"].shape == (64, 128)
    assert dec["embed_tokens"].shape == (320, 64) and dec["embed_positions"].shape == (64, 64)
    assert all(x.dtype == np.float32 for x in _leaves(params))


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def test_round_trip_is_exact(hf_state, tiny_config):
    config = tiny_config
    back = hf.to_state_dict(hf.from_state_dict(hf_state, config), config)
    assert set(back) == set(hf_state)
    for name, value in hf_state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_to_state_dict_loads_strictly_into_torch(hf_model, hf_state, tiny_config):
    import transformers

    config = tiny_config
    params = hf.from_state_dict(hf_state, config)
    fresh = transformers.WhisperForConditionalGeneration(hf_model.config).eval()
    state = {k: torch.from_numpy(v) for k, v in hf.to_state_dict(params, config).items()}
    fresh.load_state_dict(state, strict=True)
    features = torch.randn(1, 16, 120, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[301, 5, 9, 17]])
    with torch.no_grad():
        want = hf_model(input_features=features, decoder_input_ids=tokens).logits
        got = fresh(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_whisper_model_names_and_torch_tensors_accepted(hf_model, hf_state, tiny_config):
    config = tiny_config
    bare = {k.removeprefix("model."): v for k, v in hf_model.state_dict().items()}
    del bare["proj_out.weight"]
    params = hf.from_state_dict(bare, config)
    np.testing.assert_array_equal(
        params["decoder"]["layer_norm"]["scale"], hf_state["model.decoder.layer_norm.weight"]
    )


def test_config_round_trip(hf_model, tiny_config):
    config = tiny_config
    hf_dict = hf_model.config.to_dict()
    assert hf.config_from_hf(hf_dict) == config
    assert hf.fields_from_hf(hf.hf_config_dict(config)) == vars(config)
    with pytest.raises(ValueError, match="lacks"):
        hf.fields_from_hf({"d_model": 4})
    with pytest.raises(ValueError, match="not a Whisper"):
        hf.fields_from_hf({**hf_dict, "model_type": "bart"})


def test_errors_name_the_problem(hf_state, tiny_config):
    config = tiny_config
    missing = {k: v for k, v in hf_state.items() if "layers.2" not in k}
    with pytest.raises(ValueError, match=r"lacks .* layer count"):
        hf.from_state_dict(missing, config)
    with pytest.raises(ValueError, match="unexpected tensors"):
        hf.from_state_dict({**hf_state, "model.extra.weight": np.zeros(2)}, config)
    untied = {**hf_state, "proj_out.weight": hf_state["proj_out.weight"] + 1}
    with pytest.raises(ValueError, match="untied"):
        hf.from_state_dict(untied, config)
    wrong = dict(hf_state)
    wrong["model.encoder.layers.0.fc1.weight"] = np.zeros((127, 64), np.float32)
    with pytest.raises(ValueError, match=r"encoder/layers_0/fc1/kernel has shape \(64, 127\)"):
        hf.from_state_dict(wrong, config)


def _assert_same(params, hf_state, config):
    want = hf.from_state_dict(hf_state, config)
    got_sd, want_sd = hf.to_state_dict(params, config), hf.to_state_dict(want, config)
    for name in want_sd:
        np.testing.assert_array_equal(got_sd[name], want_sd[name], err_msg=name)


def test_load_safetensors_folder(hf_model, hf_state, tmp_path, tiny_config):
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    params, config, hf_config = hf.load(tmp_path)
    assert config == tiny_config and hf_config["d_model"] == 64
    _assert_same(params, hf_state, config)


def test_load_sharded_safetensors(hf_model, hf_state, tmp_path):
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    params, config, _ = hf.load(tmp_path)
    _assert_same(params, hf_state, config)


def test_load_bfloat16_safetensors(hf_model, hf_state, tmp_path):
    import safetensors.torch

    hf_model.config.to_json_file(tmp_path / "config.json")
    state = {k: v.to(torch.bfloat16) for k, v in hf_model.state_dict().items()}
    del state["proj_out.weight"]
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    params, config, _ = hf.load(tmp_path)
    want = {k: v.float().numpy() for k, v in state.items()}
    _assert_same(params, want, config)


def test_load_pytorch_model_bin(hf_model, hf_state, tmp_path):
    hf_model.config.to_json_file(tmp_path / "config.json")
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    params, config, _ = hf.load(tmp_path)
    _assert_same(params, hf_state, config)


def test_truncated_safetensors_is_reported(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        hf.load(tmp_path)


def test_missing_folder_files_and_offline_hub(tmp_path, monkeypatch, tiny_config):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        hf.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config_dict(tiny_config)))
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        hf.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hf.load(tmp_path / "nope")

    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match=r"could not be fetched .* no network"):
        hf.load("openai/whisper-tiny-not-here")


def test_expected_shapes_cover_every_leaf(hf_state):
    config = whisper.WhisperConfig.preset("tiny.en")
    shapes = hf.expected_shapes(config)
    assert shapes[("encoder", "conv1", "kernel")] == (3, 80, 384)
    assert shapes[("decoder", "embed_tokens")] == (51864, 384)
    assert len(shapes) == len(hf.param_table(config))


def test_save_is_readable_by_transformers_and_load(hf_model, hf_state, tiny_config, tmp_path):
    import transformers

    params = hf.from_state_dict(hf_state, tiny_config)
    ids = {"pad_token_id": 300, "bos_token_id": 300, "eos_token_id": 300}
    hf.save(tmp_path, params, tiny_config, hf_config=ids, generation_config={"max_length": 9})
    again, config, hf_config = hf.load(tmp_path)
    assert config == tiny_config and hf_config["eos_token_id"] == 300
    _assert_same(again, hf_state, tiny_config)
    loaded = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.generation_config.max_length == 9
    features = torch.randn(1, 16, 120, generator=torch.Generator().manual_seed(2))
    tokens = torch.tensor([[301, 4, 8]])
    with torch.no_grad():
        want = hf_model(input_features=features, decoder_input_ids=tokens).logits
        got = loaded(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
