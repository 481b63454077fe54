"""ESPnet Conformer AED checkpoints (PyTorch state dicts) -> the `models.conformer` params pytree.

Supported: ESPnet/ESPnet2 `ConformerEncoder` with `input_layer="conv2d"` (4x), rel_pos_type
"latest" (`RelPositionalEncoding` + `RelPositionMultiHeadedAttention`; the legacy variant has the
same keys but other numerics and is not detected), Swish, macaron FFN on or off, the convolution
module with BatchNorm (or LayerNorm); `TransformerDecoder`; `ctc.ctc_lo`; an optional ESPnet2
`GlobalMVN` (`normalize.mean`, `normalize.std`).

Layouts: torch linears [out, in] -> kernels [in, out]; the 1x1 pointwise convolutions
[out, in, 1] -> linear kernels [in, out]; the depthwise convolution [C, 1, K] -> [K, 1, C];
subsampling Conv2d [out, in, kh, kw] -> HWIO [kh, kw, in, out]; BatchNorm running statistics
become frozen params `norm/{mean, var}`. torch is imported only to read `.pth` files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

Params = dict[str, Any]
# (path in the params tree, ESPnet state-dict name, transform)
Entry = tuple[tuple[str, ...], str, str]

_IGNORED = re.compile(r"(num_batches_tracked|\.pe)$")


def _linear(path: tuple[str, ...], name: str, *, bias: bool = True, kind: str = "linear"):
    yield (*path, "kernel"), f"{name}.weight", kind
    if bias:
        yield (*path, "bias"), f"{name}.bias", "copy"


def _norm(path: tuple[str, ...], name: str) -> Iterator[Entry]:
    yield (*path, "scale"), f"{name}.weight", "copy"
    yield (*path, "bias"), f"{name}.bias", "copy"


def _mha(path: tuple[str, ...], name: str) -> Iterator[Entry]:
    for n in ("q", "k", "v", "out"):
        yield from _linear((*path, f"linear_{n}"), f"{name}.linear_{n}")


def param_table(config: Any, *, normalize: bool = False) -> list[Entry]:
    """Every parameter of a `ConformerConfig`: (params path, ESPnet name, transform)."""
    out: list[Entry] = []
    if normalize:
        out += [(("normalize", "mean"), "normalize.mean", "copy")]
        out += [(("normalize", "std"), "normalize.std", "copy")]
    emb = ("encoder", "embed")
    out += _linear((*emb, "conv_0"), "encoder.embed.conv.0", kind="conv2d")
    out += _linear((*emb, "conv_2"), "encoder.embed.conv.2", kind="conv2d")
    out += _linear((*emb, "out_0"), "encoder.embed.out.0")
    for i in range(config.encoder_layers):
        p, h = ("encoder", f"encoders_{i}"), f"encoder.encoders.{i}"
        a, ha = (*p, "self_attn"), f"{h}.self_attn"
        out += _mha(a, ha)
        out += _linear((*a, "linear_pos"), f"{ha}.linear_pos", bias=False)
        out += [((*a, "pos_bias_u"), f"{ha}.pos_bias_u", "copy")]
        out += [((*a, "pos_bias_v"), f"{ha}.pos_bias_v", "copy")]
        ffns = ("feed_forward", "feed_forward_macaron") if config.macaron else ("feed_forward",)
        for ff in ffns:
            out += _linear((*p, ff, "w_1"), f"{h}.{ff}.w_1")
            out += _linear((*p, ff, "w_2"), f"{h}.{ff}.w_2")
        c, hc = (*p, "conv_module"), f"{h}.conv_module"
        out += _linear((*c, "pointwise_conv1"), f"{hc}.pointwise_conv1", kind="pointwise")
        out += _linear((*c, "depthwise_conv"), f"{hc}.depthwise_conv", kind="depthwise")
        out += _norm((*c, "norm"), f"{hc}.norm")
        if config.conv_norm == "batch_norm":
            out += [((*c, "norm", "mean"), f"{hc}.norm.running_mean", "copy")]
            out += [((*c, "norm", "var"), f"{hc}.norm.running_var", "copy")]
        out += _linear((*c, "pointwise_conv2"), f"{hc}.pointwise_conv2", kind="pointwise")
        norms = ["norm_ff", "norm_mha", "norm_conv", "norm_final"]
        norms += ["norm_ff_macaron"] if config.macaron else []
        for n in norms:
            out += _norm((*p, n), f"{h}.{n}")
    out += _norm(("encoder", "after_norm"), "encoder.after_norm")
    out += [(("decoder", "embed"), "decoder.embed.0.weight", "copy")]
    for i in range(config.decoder_layers):
        p, h = ("decoder", f"decoders_{i}"), f"decoder.decoders.{i}"
        out += _mha((*p, "self_attn"), f"{h}.self_attn")
        out += _mha((*p, "src_attn"), f"{h}.src_attn")
        out += _linear((*p, "feed_forward", "w_1"), f"{h}.feed_forward.w_1")
        out += _linear((*p, "feed_forward", "w_2"), f"{h}.feed_forward.w_2")
        for n in ("norm1", "norm2", "norm3"):
            out += _norm((*p, n), f"{h}.{n}")
    out += _norm(("decoder", "after_norm"), "decoder.after_norm")
    out += _linear(("decoder", "output_layer"), "decoder.output_layer")
    out += _linear(("ctc", "ctc_lo"), "ctc.ctc_lo")
    return out


# Transforms torch -> ours; `_inverse` undoes each.
_AXES = {"linear": (1, 0), "pointwise": (1, 0), "depthwise": (2, 1, 0), "conv2d": (2, 3, 1, 0)}


def _transform(value: np.ndarray, kind: str) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if kind == "pointwise":
        value = value[..., 0]  # [out, in, 1] -> [out, in]
    if kind in _AXES:
        value = value.transpose(_AXES[kind])
    return np.ascontiguousarray(value)


def _inverse(value: np.ndarray, kind: str) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if kind in _AXES:
        value = value.transpose(np.argsort(_AXES[kind]))
    if kind == "pointwise":
        value = value[..., None]
    return np.ascontiguousarray(value)


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (bfloat16 has no numpy twin)
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def _canonical(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strips DataParallel's `module.` and drops buffers that carry no weights."""
    out = {}
    for name, value in state_dict.items():
        name = name.removeprefix("module.")
        if not _IGNORED.search(name):
            out[name] = value
    return out


def _set(tree: Params, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def config_from_state_dict(
    state_dict: Mapping[str, Any], *, n_mels: int = 80, decoder_heads: int | None = None
) -> Any:
    """A `ConformerConfig` read off the tensor shapes.

    `n_mels` cannot be recovered exactly (4 values give the same subsampled width) and the
    decoder's head count leaves no trace in its tensors: pass them (decoder_heads defaults to the
    encoder's). Raises ValueError for a state dict that is not a supported Conformer AED.
    """
    from pqm_jax.models.conformer import model as conformer

    sd = _canonical(state_dict)

    def shape(name: str) -> tuple[int, ...]:
        if name not in sd:
            raise ValueError(f"not an ESPnet Conformer AED state dict: no {name!r}")
        return tuple(sd[name].shape)

    conv0, conv2 = shape("encoder.embed.conv.0.weight"), shape("encoder.embed.conv.2.weight")
    if conv0[2:] != (3, 3) or conv2[2:] != (3, 3):
        raise ValueError(
            f"only input_layer='conv2d' (two 3x3 stride-2 convs) is supported; got kernels "
            f"{conv0[2:]} and {conv2[2:]}"
        )
    d = conv0[0]
    sub_freq = shape("encoder.embed.out.0.weight")[1] // d
    probe = conformer.ConformerConfig(vocab_size=2, n_mels=n_mels, d_model=d, encoder_heads=1)
    if probe.sub_freq != sub_freq:
        raise ValueError(f"n_mels={n_mels} gives {probe.sub_freq} subsampled bins, not {sub_freq}")
    layer_ids = lambda pat: {int(m.group(1)) for k in sd if (m := re.match(pat, k))}
    enc_layers = len(layer_ids(r"encoder\.encoders\.(\d+)\."))
    dec_layers = len(layer_ids(r"decoder\.decoders\.(\d+)\."))
    heads = shape("encoder.encoders.0.self_attn.pos_bias_u")[0]
    dec_ffn = shape("decoder.decoders.0.feed_forward.w_1.weight")[0] if dec_layers else 2048
    return conformer.ConformerConfig(
        vocab_size=shape("ctc.ctc_lo.weight")[0],
        n_mels=n_mels,
        d_model=d,
        encoder_layers=enc_layers,
        encoder_heads=heads,
        encoder_ffn=shape("encoder.encoders.0.feed_forward.w_1.weight")[0],
        kernel_size=shape("encoder.encoders.0.conv_module.depthwise_conv.weight")[2],
        conv_norm="batch_norm"
        if "encoder.encoders.0.conv_module.norm.running_mean" in sd
        else "layer_norm",
        macaron="encoder.encoders.0.feed_forward_macaron.w_1.weight" in sd,
        decoder_layers=dec_layers,
        decoder_heads=decoder_heads or heads,
        decoder_ffn=dec_ffn,
    )


def from_state_dict(state_dict: Mapping[str, Any], config: Any) -> Params:
    """ESPnet state dict (numpy arrays or torch tensors) -> params (float32 numpy arrays).

    Raises:
      ValueError: when tensors are missing, left over, or have shapes `config` does not expect.
    """
    import jax

    from pqm_jax.models.conformer import model as conformer

    names = _canonical(state_dict)
    table = param_table(config, normalize="normalize.mean" in names)
    params: Params = {}
    missing = []
    for path, name, kind in table:
        if name not in names:
            missing.append(name)
            continue
        _set(params, path, _transform(_as_numpy(names.pop(name)), kind))
    if missing:
        raise ValueError(
            f"ESPnet state dict lacks {len(missing)} tensors, e.g. {missing[:4]}; do the config's "
            "layer counts and options (macaron, conv_norm) match the checkpoint?"
        )
    if names:
        raise ValueError(f"unexpected tensors in the ESPnet state dict: {sorted(names)[:6]}")
    expected = jax.eval_shape(lambda: conformer.init(config, key=jax.random.key(0)))
    for path, _, _ in table:
        if path[0] == "normalize":
            continue
        want, got = _get(expected, path).shape, _get(params, path).shape
        if want != got:
            raise ValueError(f"{'/'.join(path)}: shape {got}, config expects {want}")
    return params


def to_state_dict(params: Params, config: Any) -> dict[str, np.ndarray]:
    """Inverse of `from_state_dict`: params -> ESPnet names and torch layouts (float32 numpy)."""
    table = param_table(config, normalize="normalize" in params)
    return {name: _inverse(_get(params, path), kind) for path, name, kind in table}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of an ESPnet `.pth` file (a plain state dict, or a dict holding one under
    "model"), as float32 numpy arrays. Uses `torch.load(weights_only=True)`."""
    import torch  # optional dependency: only this reader needs it

    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    return {k: _as_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}


def load(
    path: str | os.PathLike, *, n_mels: int = 80, decoder_heads: int | None = None
) -> tuple[Any, Params]:
    """(config, params) of an ESPnet Conformer AED checkpoint file."""
    sd = read_state_dict(path)
    config = config_from_state_dict(sd, n_mels=n_mels, decoder_heads=decoder_heads)
    return config, from_state_dict(sd, config)
