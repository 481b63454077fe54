"""Hugging Face `WhisperForConditionalGeneration` checkpoints <-> the params pytree.

The params layout (float32, kernels [in, out]) is the contract shared with `models.whisper`:
`encoder/conv1/kernel` [3, n_mels, d] (width, in, out), `encoder/layers_{i}/self_attn/q_proj/kernel`
[d, d], ... (see `param_table`). HF stores linear weights [out, in] and convolutions
[out, in, width]; `k_proj` has no bias; `proj_out` is tied to `decoder.embed_tokens`.

torch is never imported at module level; it is needed only to read `pytorch_model.bin`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from pqm_jax import jsonio

Params = dict[str, Any]
# (path in the params tree, HF state-dict name, transform): "linear" [out, in] <-> [in, out],
# "conv" [out, in, width] <-> [width, in, out], "copy" unchanged.
Entry = tuple[tuple[str, ...], str, str]

_HF_FIELDS = {
    "n_mels": "num_mel_bins",
    "vocab_size": "vocab_size",
    "d_model": "d_model",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "encoder_heads": "encoder_attention_heads",
    "decoder_heads": "decoder_attention_heads",
    "encoder_ffn": "encoder_ffn_dim",
    "decoder_ffn": "decoder_ffn_dim",
    "max_source_positions": "max_source_positions",
    "max_target_positions": "max_target_positions",
}


def make_config(fields: Mapping[str, int]) -> Any:
    """`models.whisper.WhisperConfig(**fields)` (imported here so readers work without it)."""
    from pqm_jax.models.whisper import model as whisper

    return whisper.WhisperConfig(**fields)


def _linear(path: tuple[str, ...], hf: str, *, bias: bool = True) -> Iterator[Entry]:
    yield (*path, "kernel"), f"{hf}.weight", "linear"
    if bias:
        yield (*path, "bias"), f"{hf}.bias", "copy"


def _norm(path: tuple[str, ...], hf: str) -> Iterator[Entry]:
    yield (*path, "scale"), f"{hf}.weight", "copy"
    yield (*path, "bias"), f"{hf}.bias", "copy"


def _attention(path: tuple[str, ...], hf: str) -> Iterator[Entry]:
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        yield from _linear((*path, name), f"{hf}.{name}", bias=name != "k_proj")


def param_table(config: Any) -> list[Entry]:
    """Every parameter for `config`'s layer counts: (params path, HF name, transform)."""
    out: list[Entry] = []
    enc, dec = ("encoder",), ("decoder",)
    for conv in ("conv1", "conv2"):
        out += [((*enc, conv, "kernel"), f"model.encoder.{conv}.weight", "conv")]
        out += [((*enc, conv, "bias"), f"model.encoder.{conv}.bias", "copy")]
    out += [((*enc, "embed_positions"), "model.encoder.embed_positions.weight", "copy")]
    for i in range(config.encoder_layers):
        p, h = (*enc, f"layers_{i}"), f"model.encoder.layers.{i}"
        out += _norm((*p, "self_attn_layer_norm"), f"{h}.self_attn_layer_norm")
        out += _attention((*p, "self_attn"), f"{h}.self_attn")
        out += _norm((*p, "final_layer_norm"), f"{h}.final_layer_norm")
        out += _linear((*p, "fc1"), f"{h}.fc1")
        out += _linear((*p, "fc2"), f"{h}.fc2")
    out += _norm((*enc, "layer_norm"), "model.encoder.layer_norm")
    out += [((*dec, "embed_tokens"), "model.decoder.embed_tokens.weight", "copy")]
    out += [((*dec, "embed_positions"), "model.decoder.embed_positions.weight", "copy")]
    for i in range(config.decoder_layers):
        p, h = (*dec, f"layers_{i}"), f"model.decoder.layers.{i}"
        out += _norm((*p, "self_attn_layer_norm"), f"{h}.self_attn_layer_norm")
        out += _attention((*p, "self_attn"), f"{h}.self_attn")
        out += _norm((*p, "encoder_attn_layer_norm"), f"{h}.encoder_attn_layer_norm")
        out += _attention((*p, "encoder_attn"), f"{h}.encoder_attn")
        out += _norm((*p, "final_layer_norm"), f"{h}.final_layer_norm")
        out += _linear((*p, "fc1"), f"{h}.fc1")
        out += _linear((*p, "fc2"), f"{h}.fc2")
    out += _norm((*dec, "layer_norm"), "model.decoder.layer_norm")
    return out


def _transform(value: Any, transform: str) -> np.ndarray:
    """Both directions: the transposes are their own inverses."""
    value = np.asarray(value, dtype=np.float32)
    if transform == "linear":
        return np.ascontiguousarray(value.T)
    if transform == "conv":
        return np.ascontiguousarray(value.transpose(2, 1, 0))
    return value


def _set(tree: Params, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _canonical_names(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Accepts `WhisperModel` names (`encoder.*`) as well as `model.encoder.*`."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith(("encoder.", "decoder.")):
            name = f"model.{name}"
        out[name] = value
    return out


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy twin
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def from_state_dict(state_dict: Mapping[str, Any], config: Any) -> Params:
    """HF Whisper state dict (numpy arrays or torch tensors, any float dtype) -> params (float32).

    `config` supplies the layer counts and the shapes each tensor is checked against (a
    `WhisperConfig` or anything with its attributes). `proj_out.weight` must equal the token
    embedding (every Whisper ties them); other unknown names are an error.
    """
    names = _canonical_names(state_dict)
    params: Params = {}
    missing = []
    for path, hf_name, transform in param_table(config):
        if hf_name not in names:
            missing.append(hf_name)
            continue
        _set(params, path, _transform(_as_numpy(names.pop(hf_name)), transform))
    if missing:
        raise ValueError(
            f"HF state dict lacks {len(missing)} Whisper tensors, e.g. {missing[:4]}; does the "
            "config's layer count match the checkpoint?"
        )
    proj = names.pop("proj_out.weight", None)
    if proj is not None:
        tied = params["decoder"]["embed_tokens"]
        if proj.shape != tied.shape or not np.array_equal(_as_numpy(proj), tied):
            raise ValueError(
                "proj_out.weight differs from the token embedding: untied output "
                "projections are not supported"
            )
    if names:
        raise ValueError(f"unexpected tensors in the HF state dict: {sorted(names)[:6]}")
    check_shapes(params, config)
    return params


def to_state_dict(params: Params, config: Any, *, proj_out: bool = True) -> dict[str, np.ndarray]:
    """Inverse of `from_state_dict`: params -> HF names and layouts (float32 numpy arrays).

    With `proj_out` the tied output projection is included (as a copy of the embedding), which
    `WhisperForConditionalGeneration.load_state_dict(strict=True)` expects.
    """
    out = {hf: _transform(_get(params, path), t) for path, hf, t in param_table(config)}
    if proj_out:
        out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
    return out


def expected_shapes(config: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Shape of every params leaf for `config`."""
    d = config.d_model
    shapes = {}
    for path, _, _ in param_table(config):
        leaf, parent = path[-1], path[-2]
        side = "encoder" if path[0] == "encoder" else "decoder"
        ffn = getattr(config, f"{side}_ffn")
        if parent == "conv1":
            shape = (3, config.n_mels, d) if leaf == "kernel" else (d,)
        elif parent == "conv2":
            shape = (3, d, d) if leaf == "kernel" else (d,)
        elif leaf == "embed_positions":
            n = config.max_source_positions if side == "encoder" else config.max_target_positions
            shape = (n, d)
        elif leaf == "embed_tokens":
            shape = (config.vocab_size, d)
        elif parent == "fc1":
            shape = (d, ffn) if leaf == "kernel" else (ffn,)
        elif parent == "fc2":
            shape = (ffn, d) if leaf == "kernel" else (d,)
        else:
            shape = (d, d) if leaf == "kernel" else (d,)
        shapes[path] = shape
    return shapes


def check_shapes(params: Params, config: Any) -> None:
    """Raises `ValueError` naming the first leaf whose shape disagrees with `config`."""
    for path, shape in expected_shapes(config).items():
        got = tuple(np.shape(_get(params, path)))
        if got != shape:
            raise ValueError(f"{'/'.join(path)} has shape {got}, the config implies {shape}")


def fields_from_hf(hf_config: Mapping[str, Any]) -> dict[str, int]:
    """HF `config.json` dict -> `WhisperConfig` fields."""
    missing = [hf for hf in _HF_FIELDS.values() if hf not in hf_config]
    if missing:
        raise ValueError(f"HF Whisper config lacks {missing}")
    if hf_config.get("model_type", "whisper") != "whisper":
        raise ValueError(f"not a Whisper config: model_type={hf_config['model_type']!r}")
    return {ours: int(hf_config[hf]) for ours, hf in _HF_FIELDS.items()}


def config_from_hf(hf_config: Mapping[str, Any]) -> Any:
    """HF `config.json` dict -> `models.whisper.WhisperConfig`."""
    return make_config(fields_from_hf(hf_config))


def hf_config_dict(config: Any, **extra: Any) -> dict[str, Any]:
    """`WhisperConfig` -> kwargs for `transformers.WhisperConfig` (plus `extra`, e.g. token ids)."""
    out: dict[str, Any] = {hf: int(getattr(config, ours)) for ours, hf in _HF_FIELDS.items()}
    return {"model_type": "whisper", **out, **extra}


def read_state_dict(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of an HF checkpoint folder: `model.safetensors`, its sharded index, or (with
    torch installed) `pytorch_model.bin`. Values are numpy arrays (bfloat16 -> float32)."""
    model_dir = pathlib.Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return _read_safetensors([single])
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return _read_safetensors([model_dir / s for s in shards])
    legacy = model_dir / "pytorch_model.bin"
    if legacy.is_file():
        try:
            import torch  # optional, legacy checkpoints only
        except ImportError as e:
            raise ImportError(
                f"{legacy} is a torch pickle and torch is not installed: `pip install torch`, or "
                "convert the checkpoint to model.safetensors"
            ) from e
        state = torch.load(legacy, map_location="cpu", weights_only=True)
        return {k: _as_numpy(v) for k, v in state.items()}
    raise FileNotFoundError(
        f"no model.safetensors, model.safetensors.index.json or pytorch_model.bin in {model_dir}"
    )


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_FLOATS = ("F64", "F32", "F16", "BF16")


def _read_safetensors(paths: list[pathlib.Path]) -> dict[str, np.ndarray]:
    """Reads safetensors files directly (8-byte header size, JSON header, raw little-endian data):
    numpy's reader in the `safetensors` package rejects bfloat16."""
    out = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"safetensors shard {path} is missing")
        data = np.memmap(path, dtype=np.uint8, mode="r")
        n = int(data[:8].view("<u8")[0])
        header = json.loads(bytes(data[8 : 8 + n]))
        header.pop("__metadata__", None)
        for name, info in header.items():
            begin, end = (8 + n + o for o in info["data_offsets"])
            if end > data.size:
                raise ValueError(f"{path} is truncated ({name} ends at byte {end} > {data.size})")
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
            value = data[begin:end].view(dtype).reshape(info["shape"])
            out[name] = value.astype(np.float32) if info["dtype"] in _FLOATS else np.array(value)
    return out


def resolve(path_or_hub_id: str | os.PathLike, *, revision: str | None = None) -> pathlib.Path:
    """A local folder as is; otherwise a hub id fetched with `huggingface_hub.snapshot_download`."""
    path = pathlib.Path(path_or_hub_id)
    if path.exists():
        return path
    name = str(path_or_hub_id)
    if name.startswith((".", "/")) or name.count("/") > 1:
        raise FileNotFoundError(
            f"{name} does not exist (and is not a hub id like openai/whisper-tiny)"
        )
    try:
        import huggingface_hub  # only for hub ids

        return pathlib.Path(
            huggingface_hub.snapshot_download(
                name,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
            )
        )
    except Exception as e:
        raise FileNotFoundError(
            f"{name} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {e}); download it where there is network "
            f"(`hf download {name}`) and pass the folder"
        ) from e


def save(
    model_dir: str | os.PathLike,
    params: Params,
    config: Any,
    *,
    hf_config: Mapping[str, Any] | None = None,
    generation_config: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Writes an HF Whisper folder readable by `WhisperForConditionalGeneration.from_pretrained`
    (and `load`): `model.safetensors` (float32, `proj_out` left to the tie), `config.json` (from
    `config`, updated with `hf_config`, e.g. token ids) and optionally `generation_config.json`."""
    import safetensors.numpy  # lazy: keeps `import pqm_jax.models.whisper.hf` light

    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = to_state_dict(params, config, proj_out=False)
    safetensors.numpy.save_file(state, model_dir / "model.safetensors", metadata={"format": "pt"})
    full = {"architectures": ["WhisperForConditionalGeneration"], **hf_config_dict(config)}
    full |= dict(hf_config or {})
    (model_dir / "config.json").write_text(json.dumps(full, indent=2))
    if generation_config is not None:
        text = json.dumps(dict(generation_config), indent=2)
        (model_dir / "generation_config.json").write_text(text)
    return model_dir


def load(
    path_or_hub_id: str | os.PathLike, *, revision: str | None = None
) -> tuple[Params, Any, dict[str, Any]]:
    """HF Whisper checkpoint (folder or hub id) -> (params, WhisperConfig, HF config dict)."""
    model_dir = resolve(path_or_hub_id, revision=revision)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: not a Hugging Face model folder")
    hf_config = jsonio.read_object(config_path, what="the model's Hugging Face config")
    jsonio.fields(hf_config, {k: int for k in _HF_FIELDS.values()}, config_path)
    config = config_from_hf(hf_config)
    return from_state_dict(read_state_dict(model_dir), config), config, hf_config
