"""PEFT adapter interchange: our LoRA trees <-> Hugging Face PEFT folders, checked against PEFT
itself on a tiny random Whisper (PyTorch); nothing downloads."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import lora as lora_lib
from pqm_jax.convert import peft as peft_io
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import hf
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import tree as qtree

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CONFIG = whisper.WhisperConfig(
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
ALL_LINEAR = (*whisper_family.LORA_TARGETS, r"fc[12]$")


def _hf_model(seed: int = 0):
    """A fresh random `WhisperForConditionalGeneration` (PEFT wraps models in place)."""
    ids = {"pad_token_id": 300, "bos_token_id": 300, "eos_token_id": 300}
    hf_config = transformers.WhisperConfig(
        **hf.hf_config_dict(CONFIG, decoder_start_token_id=301, **ids),
        attn_implementation="eager",
    )
    model = transformers.WhisperForConditionalGeneration(hf_config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _params(model) -> dict:
    return jax.tree.map(jnp.asarray, hf.from_state_dict(model.state_dict(), CONFIG))


def _adapters(config: lora_lib.LoraConfig, seed: int = 0) -> dict:
    """Adapters for every Whisper linear layer that `config.targets` selects (as `lora.init`
    would), with A and B random so every adapter changes the model; numpy, so it is quick."""
    rng = np.random.default_rng(seed)
    match = qtree.match_any(config.targets)
    tree: dict = {}
    for path, shape in hf.expected_shapes(CONFIG).items():
        module = "/".join(path[:-1])
        if path[-1] != "kernel" or len(shape) != 2 or not match(module):
            continue
        a = rng.normal(0, 0.3, (shape[0], config.rank)).astype(np.float32)
        b = rng.normal(0, 0.3, (config.rank, shape[1])).astype(np.float32)
        node = tree
        for k in path[:-2]:
            node = node.setdefault(k, {})
        node[path[-2]] = lora_lib.LoraWeights(
            a=jnp.asarray(a), b=jnp.asarray(b), scale=config.scale, dropout=config.dropout
        )
    return tree


def _inputs(batch: int = 2, length: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    mel = rng.normal(size=(batch, CONFIG.n_mels, CONFIG.n_frames)).astype(np.float32)
    tokens = rng.integers(0, 300, (batch, length)).astype(np.int64)
    return mel, tokens


def _ours(params, adapters, mel, tokens) -> np.ndarray:
    enc = whisper.encode(params, jnp.asarray(mel), config=CONFIG, lora=adapters)
    return np.asarray(
        whisper.decode(params, jnp.asarray(tokens), enc, config=CONFIG, lora=adapters)
    )


def _torch_logits(model, mel, tokens) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens)
        )
    return out.logits.numpy()


def _lora_modules(model) -> set[str]:
    """Names (relative to the HF model) of the modules PEFT put adapters on."""
    prefix = "base_model.model."
    return {
        n.removeprefix(prefix)
        for n, m in model.named_modules()
        if isinstance(m, peft.tuners.lora.LoraLayer)
    }


def _assert_trees_equal(x, y):
    assert jax.tree.structure(x) == jax.tree.structure(y)  # includes the static scale/dropout
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_round_trip_is_bit_exact_and_files_follow_peft(tmp_path):
    config = lora_lib.LoraConfig(
        rank=4, alpha=8.0, dropout=0.05, targets=whisper_family.LORA_TARGETS
    )
    adapters = _adapters(config)
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), adapters)
    peft_io.export(half, tmp_path / "bf16", config=config, base_model_name_or_path=None)
    _assert_trees_equal(peft_io.load(tmp_path / "bf16")[0], half)
    out = peft_io.export(adapters, tmp_path, config=config, base_model_name_or_path="tiny")
    loaded, loaded_config = peft_io.load(out, model_config=CONFIG)
    _assert_trees_equal(loaded, adapters)
    assert loaded_config == config

    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["task_type"] is None and meta["bias"] == "none"
    assert (meta["r"], meta["lora_alpha"], meta["lora_dropout"]) == (4, 8.0, 0.05)
    assert sorted(meta["target_modules"]) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    assert meta["base_model_name_or_path"] == "tiny" and meta["inference_mode"] is True
    assert meta["use_rslora"] is False and meta["fan_in_fan_out"] is False
    tensors = peft.utils.load_peft_weights(str(tmp_path), device="cpu")
    key = "base_model.model.model.decoder.layers.2.encoder_attn.q_proj.lora_"
    ad = adapters["decoder"]["layers_2"]["encoder_attn"]["q_proj"]
    np.testing.assert_array_equal(tensors[key + "A.weight"].numpy(), np.asarray(ad.a).T)
    np.testing.assert_array_equal(tensors[key + "B.weight"].numpy(), np.asarray(ad.b).T)
    # 2 encoder layers x 4 + 3 decoder layers x 8 projections, A and B each.
    assert len(tensors) == 2 * (2 * 4 + 3 * 8)


def test_one_speaker_of_a_bank(tmp_path):
    config = lora_lib.LoraConfig(rank=2, alpha=4.0, targets=(r"decoder/.*self_attn/v_proj$",))
    bank = lora_lib.stack([_adapters(config, seed=s) for s in range(3)])
    peft_io.export(bank, tmp_path, config=config, base_model_name_or_path=None, speaker=1)
    loaded, _ = peft_io.load(tmp_path)
    _assert_trees_equal(loaded, lora_lib.take(bank, 1))
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    # "v_proj" would also select the encoder's and the cross-attention's: an explicit list.
    assert meta["target_modules"] == [
        f"model.decoder.layers.{i}.self_attn.v_proj" for i in range(3)
    ]
    assert meta["r"] == 2
    with pytest.raises(ValueError, match="bank of 3 speakers"):
        peft_io.export(bank, tmp_path, config=config, base_model_name_or_path=None)
    with pytest.raises(IndexError, match="out of range"):
        peft_io.export(bank, tmp_path, config=config, base_model_name_or_path=None, speaker=3)


@pytest.mark.parametrize(
    "rslora,targets",
    [(False, ALL_LINEAR), (True, (r"decoder/layers_[02]/.*(q_proj|v_proj)$", r"encoder/.*fc2$"))],
)
def test_peft_loads_our_export_and_computes_our_logits(tmp_path, rslora, targets):
    model = _hf_model()
    params = _params(model)
    config = lora_lib.LoraConfig(rank=4, alpha=6.0, targets=targets, rslora=rslora)
    adapters = _adapters(config)
    peft_io.export(adapters, tmp_path, config=config, base_model_name_or_path=None)
    mel, tokens = _inputs()
    base = _torch_logits(model, mel, tokens)

    peft_model = peft.PeftModel.from_pretrained(model, str(tmp_path)).eval()
    exported = {peft_io.hf_module_name(p) for p in peft_io.modules(adapters)}
    assert _lora_modules(peft_model) == exported  # no extra (zero) adapters in PEFT
    theirs = _torch_logits(peft_model, mel, tokens)
    ours = _ours(params, adapters, mel, tokens)
    assert np.abs(theirs - base).max() > 1e-2  # the adapters do change the model
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rslora", [False, True])
def test_we_load_peft_save_pretrained_and_compute_its_logits(tmp_path, rslora):
    model = _hf_model(seed=1)
    params = _params(model)
    peft_config = peft.LoraConfig(
        r=3,
        lora_alpha=5,
        target_modules=["q_proj", "out_proj", "fc1"],
        lora_dropout=0.1,
        use_rslora=rslora,
        init_lora_weights=False,  # B random as well: a non-trivial adapter
    )
    peft_model = peft.get_peft_model(model, peft_config).eval()
    peft_model.save_pretrained(str(tmp_path))
    mel, tokens = _inputs(seed=2)
    theirs = _torch_logits(peft_model, mel, tokens)

    adapters, config = peft_io.load(tmp_path, model_config=CONFIG)
    assert (config.rank, config.alpha, config.rslora, config.dropout) == (3, 5.0, rslora, 0.1)
    n = len(peft_io.modules(adapters))
    assert n == 2 * 3 + 3 * 5  # q/out_proj per attention block, fc1 per layer
    np.testing.assert_allclose(_ours(params, adapters, mel, tokens), theirs, atol=1e-4, rtol=1e-4)
    # The imported config selects the same modules from our params.
    again = _adapters(config)
    assert jax.tree.structure(again) == jax.tree.structure(adapters)


def test_peft_layer_selection_imports_as_exact_targets(tmp_path):
    model = _hf_model(seed=3)
    peft_config = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["v_proj"], layers_to_transform=[1]
    )
    peft.get_peft_model(model, peft_config).save_pretrained(str(tmp_path))
    adapters, config = peft_io.load(tmp_path)
    expected = {
        "encoder/layers_1/self_attn/v_proj",
        "decoder/layers_1/self_attn/v_proj",
        "decoder/layers_1/encoder_attn/v_proj",
    }
    assert set(peft_io.modules(adapters)) == expected
    assert set(peft_io.modules(_adapters(config))) == expected  # not every v_proj


def test_legacy_bin_with_and_without_torch(tmp_path, monkeypatch):
    model = _hf_model(seed=2)
    peft_config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"])
    peft_model = peft.get_peft_model(model, peft_config)
    peft_model.save_pretrained(str(tmp_path), safe_serialization=False)
    assert not (tmp_path / "adapter_model.safetensors").exists()
    adapters, _ = peft_io.load(tmp_path)
    ad = adapters["encoder"]["layers_1"]["self_attn"]["v_proj"]
    ref = peft_model.base_model.model.model.encoder.layers[1].self_attn.v_proj
    np.testing.assert_array_equal(np.asarray(ad.a), ref.lora_A["default"].weight.detach().numpy().T)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="torch is not installed"):
        peft_io.load(tmp_path)


def _exported(tmp_path, rank: int = 2):
    config = lora_lib.LoraConfig(rank=rank, alpha=4.0, targets=whisper_family.LORA_TARGETS)
    adapters = _adapters(config)
    peft_io.export(adapters, tmp_path, config=config, base_model_name_or_path=None)
    return adapters, config


def _edit_config(tmp_path, **changes):
    file = tmp_path / "adapter_config.json"
    meta = json.loads(file.read_text())
    file.write_text(json.dumps(meta | changes))


def _edit_tensors(tmp_path, edit):
    import safetensors.numpy

    file = tmp_path / "adapter_model.safetensors"
    tensors = safetensors.numpy.load_file(str(file))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(file))


def test_load_rejects_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        peft_io.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json is missing"):
        peft_io.load(tmp_path)
    _exported(tmp_path)
    _edit_config(tmp_path, r=8)
    with pytest.raises(ValueError, match=r"rank mismatch.*r=8"):
        peft_io.load(tmp_path)
    _edit_config(tmp_path, r=2, peft_type="IA3")
    with pytest.raises(ValueError, match="only 'LORA'"):
        peft_io.load(tmp_path)
    _edit_config(tmp_path, peft_type="LORA", use_dora=True)
    with pytest.raises(ValueError, match="use_dora"):
        peft_io.load(tmp_path)
    _edit_config(tmp_path, use_dora=False, bias="all")
    with pytest.raises(ValueError, match="bias='all'"):
        peft_io.load(tmp_path)
    _edit_config(tmp_path, bias="none")
    peft_io.load(tmp_path)  # restored

    name = "base_model.model.model.encoder.layers.0.self_attn.k_proj.lora_"
    _edit_tensors(tmp_path, lambda t: t.update({name + "magnitude_vector": np.ones(2)}))
    with pytest.raises(ValueError, match="unexpected tensor"):
        peft_io.load(tmp_path)
    _edit_tensors(tmp_path, lambda t: t.pop(name + "magnitude_vector"))
    bad = "base_model.model.model.encoder.layers.0.encoder_attn.q_proj.lora_A.weight"
    _edit_tensors(tmp_path, lambda t: t.update({bad: np.ones((2, 64), np.float32)}))
    with pytest.raises(ValueError, match="not a LoRA-capable Whisper module"):
        peft_io.load(tmp_path)
    _edit_tensors(tmp_path, lambda t: (t.pop(bad), t.pop(name + "B.weight")))
    with pytest.raises(ValueError, match="but not its partner"):
        peft_io.load(tmp_path)

    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no adapter_model.safetensors"):
        peft_io.load(tmp_path)


def test_load_checks_against_the_model_config(tmp_path):
    _exported(tmp_path)
    small = whisper.WhisperConfig(**{**CONFIG.__dict__, "d_model": 32})
    with pytest.raises(ValueError, match=r"maps 64 -> 64 features.*32 -> 32"):
        peft_io.load(tmp_path, model_config=small)
    shallow = whisper.WhisperConfig(**{**CONFIG.__dict__, "decoder_layers": 2})
    with pytest.raises(ValueError, match="decoder has 2 layers"):
        peft_io.load(tmp_path, model_config=shallow)


def test_export_rejects_inconsistent_inputs(tmp_path):
    adapters, config = _exported(tmp_path)
    with pytest.raises(ValueError, match="rank 2, the config says 4"):
        peft_io.export(
            adapters,
            tmp_path,
            config=lora_lib.LoraConfig(rank=4, alpha=4.0, targets=whisper_family.LORA_TARGETS),
            base_model_name_or_path=None,
        )
    with pytest.raises(ValueError, match=r"implies 2.8"):
        rs = lora_lib.LoraConfig(rank=2, alpha=4.0, rslora=True)
        peft_io.export(adapters, tmp_path, config=rs, base_model_name_or_path=None)
    with pytest.raises(ValueError, match="holds a single adapter"):
        peft_io.export(adapters, tmp_path, config=config, base_model_name_or_path=None, speaker=0)
    odd = {
        "encoder": {
            "layers_0": {
                "encoder_attn": {
                    "q_proj": adapters["decoder"]["layers_0"]["encoder_attn"]["q_proj"]
                }
            }
        }
    }
    with pytest.raises(ValueError, match="no Hugging Face Whisper module"):
        peft_io.export(odd, tmp_path, config=config, base_model_name_or_path=None)
    with pytest.raises(TypeError, match="not LoraWeights"):
        peft_io.export(
            {"decoder": {"x": np.ones(2)}}, tmp_path, config=config, base_model_name_or_path=None
        )
    with pytest.raises(ValueError, match="empty"):
        peft_io.export({}, tmp_path, config=config, base_model_name_or_path=None)
