"""LoRA adapters <-> Hugging Face PEFT adapter folders, so PyTorch users can load ours and we theirs.

A PEFT LoRA folder holds `adapter_config.json` and `adapter_model.safetensors` (older ones:
`adapter_model.bin`, a torch pickle). Tensor names are the wrapped model's module names behind
PEFT's `base_model.model.` prefix, e.g.

    base_model.model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight   A: [r, in]
    base_model.model.model.encoder.layers.0.self_attn.q_proj.lora_B.weight   B: [out, r]

i.e. torch layouts: our `LoraWeights.a` [in, r] is A transposed, `.b` [r, out] is B transposed.
Both compute y += scale * x @ A.T @ B.T with scale = lora_alpha / r (or / sqrt(r) with rsLoRA).

Our module paths (`decoder/layers_1/encoder_attn/v_proj`) map one to one onto HF Whisper's
(`model.decoder.layers.1.encoder_attn.v_proj`); only Whisper's linear layers have a mapping.

torch is never imported at module level; it is needed only to read `adapter_model.bin`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.quant import tree as qtree

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
# PeftModel.base_model (LoraModel) .model (WhisperForConditionalGeneration).
PREFIX = "base_model.model."

_ATTENTION = r"(?:self_attn|encoder_attn)/(?:q_proj|k_proj|v_proj|out_proj)"
_MODULE = re.compile(rf"(encoder|decoder)/layers_(\d+)/({_ATTENTION}|fc1|fc2)")
_HF_MODULE = re.compile(
    r"(?:model\.)?(encoder|decoder)\.layers\.(\d+)\."
    r"((?:self_attn|encoder_attn)\.(?:q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
)
_KEY = re.compile(r"(.+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight")
_ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj")

# Fields of PEFT's LoraConfig we cannot represent: their non-default values are refused on load.
_UNSUPPORTED = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "modules_to_save": None,
    "use_qalora": False,
    "megatron_config": None,
}


def hf_module_name(path: str) -> str:
    """'encoder/layers_0/self_attn/q_proj' -> 'model.encoder.layers.0.self_attn.q_proj'."""
    m = _MODULE.fullmatch(path)
    if m is None or (m[1] == "encoder" and m[3].startswith("encoder_attn")):
        raise ValueError(
            f"no Hugging Face Whisper module for adapter path {path!r}: only the attention "
            "projections (q/k/v/out_proj of self_attn, and of the decoder's encoder_attn) and "
            "fc1/fc2 of encoder/decoder layers can be exported"
        )
    return f"model.{m[1]}.layers.{m[2]}.{m[3].replace('/', '.')}"


def module_path(hf_name: str) -> str:
    """'model.decoder.layers.1.fc1' (or 'decoder.layers.1.fc1') -> 'decoder/layers_1/fc1'."""
    m = _HF_MODULE.fullmatch(hf_name)
    if m is None or (m[1] == "encoder" and m[3].startswith("encoder_attn")):
        raise ValueError(
            f"{hf_name!r} is not a LoRA-capable Whisper module (expected e.g. "
            "'model.decoder.layers.0.encoder_attn.q_proj' or '...layers.0.fc1')"
        )
    return f"{m[1]}/layers_{m[2]}/{m[3].replace('.', '/')}"


def modules(adapters: Any) -> dict[str, lora_lib.LoraWeights]:
    """module path ('decoder/layers_0/fc1') -> LoraWeights for every adapter in the tree."""
    is_lora = lambda x: isinstance(x, lora_lib.LoraWeights)
    flat = jax.tree_util.tree_flatten_with_path(adapters, is_leaf=is_lora)[0]
    out = {}
    for path, leaf in flat:
        if not is_lora(leaf):
            raise TypeError(
                f"adapter tree leaf at {qtree.path_str(path)!r} is a {type(leaf).__name__}, not "
                "LoraWeights"
            )
        out[qtree.path_str(path)] = leaf
    if not out:
        raise ValueError("the adapter tree is empty")
    return out


def _select_speaker(ad: lora_lib.LoraWeights, path: str, speaker: int | None) -> tuple:
    a, b = np.asarray(ad.a), np.asarray(ad.b)
    if a.ndim == 3 or b.ndim == 3:
        if speaker is None:
            raise ValueError(
                f"{path} is a bank of {a.shape[0]} speakers' adapters: pass speaker=i to "
                "export one of them (a PEFT folder holds one adapter)"
            )
        if not -a.shape[0] <= speaker < a.shape[0]:
            raise IndexError(f"speaker {speaker} out of range for a bank of {a.shape[0]}")
        a, b = a[speaker], b[speaker]
    elif speaker is not None:
        raise ValueError(f"speaker={speaker} given but {path} holds a single adapter, not a bank")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"{path}: a {a.shape} and b {b.shape} are not [in, r] and [r, out]")
    return a, b


def _short_targets(paths: Sequence[str]) -> list[str] | None:
    """PEFT's short target names (['q_proj', 'fc1', ...]) when they select exactly `paths` in a
    Whisper with the layer counts the paths imply; None when only an explicit list is exact."""
    names = sorted({p.rsplit("/", 1)[1] for p in paths})
    layers: dict[str, set[int]] = {"encoder": set(), "decoder": set()}
    for p in paths:
        side, layer = p.split("/")[:2]
        layers[side].add(int(layer.removeprefix("layers_")))
    implied = set()
    for side, idx in layers.items():
        if not idx or idx != set(range(max(idx) + 1)):
            return None  # a side without adapters, or a gap: short names would add modules
        parents = ["self_attn"] + (["encoder_attn"] if side == "decoder" else [])
        for i in idx:
            for name in names:
                if name in _ATTENTION_NAMES:
                    implied |= {f"{side}/layers_{i}/{par}/{name}" for par in parents}
                else:
                    implied.add(f"{side}/layers_{i}/{name}")
    return names if implied == set(paths) else None


def export(
    adapters: Any,
    path: str | os.PathLike,
    *,
    config: lora_lib.LoraConfig,
    base_model_name_or_path: str | None,
    speaker: int | None = None,
    target_modules: Sequence[str] | None = None,
) -> pathlib.Path:
    """Writes a Hugging Face PEFT LoRA adapter folder loadable by `PeftModel.from_pretrained`.

    Args:
      adapters: adapter tree (module path -> `LoraWeights` a [in, r], b [r, out]), or a bank
        whose arrays carry a leading speaker axis ([S, in, r], [S, r, out]) with `speaker`.
      path: folder to create (or overwrite the adapter files in).
      config: the `LoraConfig` the adapters were made with (rank, alpha, rsLoRA, dropout); every
        adapter's rank and scale must agree with it.
      base_model_name_or_path: recorded for PEFT (e.g. "openai/whisper-tiny"); None if unknown.
      speaker: which speaker of a bank to export.
      target_modules: PEFT `target_modules` to record; by default the short names (["q_proj",
        "k_proj", "v_proj", "out_proj"]) when they select exactly the exported modules, else the
        explicit list of full module names.

    Returns:
      The folder, holding `adapter_model.safetensors` (float tensors in the adapters' dtype) and
      `adapter_config.json`.
    """
    flat = modules(adapters)
    tensors: dict[str, np.ndarray] = {}
    for mod, ad in flat.items():
        hf = hf_module_name(mod)
        a, b = _select_speaker(ad, mod, speaker)
        if a.shape[1] != config.rank:
            raise ValueError(f"{mod} has rank {a.shape[1]}, the config says {config.rank}")
        if not np.isclose(ad.scale, config.scale, rtol=1e-6, atol=0.0):
            raise ValueError(
                f"{mod} has scale {ad.scale}, but the config (alpha {config.alpha}, rank "
                f"{config.rank}, rslora={config.rslora}) implies {config.scale}: PEFT would "
                "compute a different model"
            )
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = np.ascontiguousarray(b.T)
    if target_modules is None:
        target_modules = _short_targets(list(flat)) or sorted(hf_module_name(m) for m in flat)
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.rslora,
        "target_modules": list(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
    }
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "exported_by": "pqm_jax"}
    if speaker is not None:
        metadata["speaker"] = str(speaker)
    safetensors.numpy.save_file(tensors, str(out / WEIGHTS_NAME), metadata=metadata)
    (out / CONFIG_NAME).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    return out


def _read_config(folder: pathlib.Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: not a PEFT adapter folder")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} holds a {type(cfg).__name__}, not a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type is {cfg.get('peft_type')!r}, only 'LORA' is supported")
    for field in ("r", "lora_alpha"):
        if field not in cfg:
            raise ValueError(f"{file} lacks {field!r}")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{file}: bias={cfg['bias']!r} trains biases; only 'none' is supported")
    for field, default in _UNSUPPORTED.items():
        if cfg.get(field, default) not in (default, None, {}, [], False):
            raise ValueError(f"{file}: {field}={cfg[field]!r} is not supported")
    return cfg


def _read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
    file = folder / WEIGHTS_NAME
    if file.is_file():
        return safetensors.numpy.load_file(str(file))
    legacy = folder / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        try:
            import torch  # optional: legacy pickled adapters only
        except ImportError as e:
            raise ImportError(
                f"{legacy} is a torch pickle and torch is not installed: `pip install torch`, "
                "or re-save the adapter with PEFT's save_pretrained(safe_serialization=True)"
            ) from e
        state = torch.load(legacy, map_location="cpu", weights_only=True)
        return {k: v.detach().cpu().float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME} in {folder}")


def _targets(cfg: dict[str, Any], present: Sequence[str]) -> tuple[str, ...]:
    """PEFT `target_modules` as our `LoraConfig.targets` (regexes searched in module paths)."""
    target_modules = cfg.get("target_modules")
    narrowed = any(cfg.get(f) for f in ("layers_to_transform", "layers_pattern", "exclude_modules"))
    if isinstance(target_modules, list | tuple) and target_modules and not narrowed:
        if set(target_modules) == set(_ATTENTION_NAMES):
            return whisper_family.LORA_TARGETS
        out = []
        for t in sorted(target_modules):
            # PEFT: a module matches when its name equals t or ends with "." + t.
            parts = str(t).removeprefix("model.").split(".")
            pieces = []
            for i, part in enumerate(parts):
                if i > 0 and parts[i - 1] == "layers" and part.isdigit():
                    pieces[-1] = f"layers_{part}"
                else:
                    pieces.append(part)
            out.append(r"(^|/)" + re.escape("/".join(pieces)) + "$")
        return tuple(out)
    # A regex on HF names, "all-linear", or a selection narrowed by layer or exclusion: exactly
    # the modules present.
    return tuple("^" + re.escape(m) + "$" for m in sorted(present))


def _check_dims(mod: str, a: np.ndarray, b: np.ndarray, model_config: Any) -> None:
    d = model_config.d_model
    side, layer, *_ = mod.split("/")
    name = mod.rsplit("/", 1)[1]
    ffn = getattr(model_config, f"{side}_ffn")
    d_in, d_out = {"fc1": (d, ffn), "fc2": (ffn, d)}.get(name, (d, d))
    n_layers = getattr(model_config, f"{side}_layers")
    if int(layer.removeprefix("layers_")) >= n_layers:
        raise ValueError(f"adapter for {mod}, but the model's {side} has {n_layers} layers")
    if (a.shape[0], b.shape[1]) != (d_in, d_out):
        raise ValueError(
            f"{mod}: adapter maps {a.shape[0]} -> {b.shape[1]} features, the model's layer "
            f"maps {d_in} -> {d_out}"
        )


def load(path: str | os.PathLike, *, model_config: Any = None) -> tuple[dict, lora_lib.LoraConfig]:
    """Reads a Hugging Face PEFT LoRA adapter folder (ours or PEFT's `save_pretrained`).

    Args:
      path: folder with `adapter_config.json` and `adapter_model.safetensors` (or, with torch
        installed, `adapter_model.bin`).
      model_config: optional `WhisperConfig`; when given, each adapter's layer index and in/out
        sizes are checked against it.

    Returns:
      (adapters, config): the adapter tree (module path -> `LoraWeights` a [in, r], b [r, out],
      arrays in the file's dtype) holding exactly the modules in the file, and the `LoraConfig`
      (rank, alpha, rsLoRA, dropout; targets from `target_modules`).

    Raises:
      FileNotFoundError: config or weights missing. ValueError: a non-LoRA or unsupported PEFT
      config (DoRA, trained biases, per-module rank/alpha patterns, modules_to_save), a tensor
      name that is not a Whisper LoRA weight, an unpaired A/B, or a rank differing from `r`.
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (a PEFT adapter is a folder)")
    cfg = _read_config(folder)
    rank = int(cfg["r"])
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _read_tensors(folder).items():
        m = _KEY.fullmatch(key.removeprefix(PREFIX))
        if m is None:
            raise ValueError(
                f"unexpected tensor {key!r} in the adapter: expected only "
                "'base_model.model.<module>.lora_A.weight' / '.lora_B.weight'"
            )
        mod = module_path(m[1])
        if m[2] in pairs.setdefault(mod, {}):
            raise ValueError(f"two lora_{m[2]} tensors for {mod} (e.g. {key!r})")
        pairs[mod][m[2]] = np.asarray(value)
    if not pairs:
        raise ValueError(f"the adapter in {folder} holds no tensors")
    config = lora_lib.LoraConfig(
        rank=rank,
        alpha=float(cfg["lora_alpha"]),
        targets=_targets(cfg, list(pairs)),
        dropout=float(cfg.get("lora_dropout") or 0.0),
        rslora=bool(cfg.get("use_rslora", False)),
    )
    tree: dict = {}
    for mod, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{mod} has lora_{''.join(ab)} but not its partner")
        a, b = ab["A"].T, ab["B"].T  # [in, r], [r, out]
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"{mod}: lora_A {ab['A'].shape} / lora_B {ab['B'].shape} are not 2-D")
        if a.shape[1] != rank or b.shape[0] != rank:
            raise ValueError(
                f"{mod}: rank mismatch: lora_A {ab['A'].shape}, lora_B {ab['B'].shape}, but "
                f"adapter_config.json says r={rank}"
            )
        if model_config is not None:
            _check_dims(mod, a, b, model_config)
        weights = lora_lib.LoraWeights(
            a=jnp.asarray(np.ascontiguousarray(a)),
            b=jnp.asarray(np.ascontiguousarray(b)),
            scale=config.scale,
            dropout=config.dropout,
        )
        node = tree
        *parents, last = mod.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = weights
    return tree, config
