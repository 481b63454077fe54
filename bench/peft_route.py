"""The paper's PyTorch route, built from our weights: transformers Whisper, bitsandbytes NF4
`Linear4bit` (block 64, double quantisation) for every linear layer, PEFT LoRA on q/k/v/out.

Used by bench_peft_peer.py as the peer of our vmapped adaptation; one speaker after another.
"""

from __future__ import annotations

import numpy as np

from pqm_jax.models.whisper import hf


def nf4_round(weight: np.ndarray) -> np.ndarray:
    """`weight` rounded through bitsandbytes NF4 (block 64, double quant) and back to float32:
    the tied token embedding, which bitsandbytes cannot store as 4-bit (the reference's way)."""
    import bitsandbytes.functional as bnbf
    import torch

    t = torch.from_numpy(np.ascontiguousarray(weight, np.float32))
    packed, state = bnbf.quantize_4bit(t, blocksize=64, quant_type="nf4", compress_statistics=True)
    return bnbf.dequantize_4bit(packed, state).numpy()


def _to_linear4bit(linear):
    import bitsandbytes as bnb
    import torch

    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=torch.float32,
        compress_statistics=True,
        quant_type="nf4",
    )
    q.weight = bnb.nn.Params4bit(
        linear.weight.data.clone(),
        requires_grad=False,
        blocksize=64,
        compress_statistics=True,
        quant_type="nf4",
    ).to(linear.weight.device)
    if linear.bias is not None:
        q.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    # bitsandbytes repacks 4-bit weights with bf16 scales on AVX512-BF16 CPUs at inference;
    # off, so the layer computes x @ dequantize_4bit(W).T + b in float32 (REFERENCE_RESULTS.md).
    q.support_avx512bf16_for_cpu = False
    return q


def quantize_linears(module, skip: tuple[str, ...] = ("proj_out",)) -> int:
    """Replaces every `nn.Linear` under `module` by an NF4 `Linear4bit`, in place; returns the
    count. `proj_out` is tied to the token embedding and stays as it is."""
    import torch

    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and name not in skip:
            setattr(module, name, _to_linear4bit(child))
            n += 1
        else:
            n += quantize_linears(child, skip)
    return n


def build(params: dict, config, *, sot: int, eot: int, rank: int = 8, alpha: float = 16.0):
    """(PEFT model, number of Linear4bit layers) from our float32 Whisper params and config
    (already cut to the audio window: HF then expects 2 x max_source_positions mel frames)."""
    import peft
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    state = hf.to_state_dict(params, config)
    embed = "model.decoder.embed_tokens.weight"
    state[embed] = nf4_round(state[embed])
    if "proj_out.weight" in state:  # tied to the embedding
        state["proj_out.weight"] = state[embed]
    cfg = transformers.WhisperConfig(
        **hf.hf_config_dict(config, decoder_start_token_id=sot, eos_token_id=eot),
        attn_implementation="eager",
    )
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(cfg)
    tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    n = quantize_linears(model.model)
    lora = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    )
    return peft.get_peft_model(model, lora), n


def reset_adapters(model) -> None:
    """Fresh LoRA weights (A random, B zero) in every adapted layer: the next speaker."""
    import peft

    for m in model.modules():
        if isinstance(m, peft.tuners.lora.LoraLayer):
            m.reset_lora_parameters("default", True)


def adapt_speaker(model, batches: dict, *, lr: float, weight_decay: float) -> float:
    """One speaker's adaptation: fresh adapters, a new AdamW, one update per batch.

    Args:
      batches: numpy {mel [K, B, n_mels, frames], inputs/targets/weights [K, B, T]}.
    Returns the last loss (so the work cannot be skipped).
    """
    import torch

    reset_adapters(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    loss = torch.zeros(())
    for k in range(len(batches["mel"])):
        out = model(
            input_features=torch.from_numpy(batches["mel"][k]),
            decoder_input_ids=torch.from_numpy(batches["inputs"][k].astype(np.int64)),
        )
        logits = out.logits
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            torch.from_numpy(batches["targets"][k].astype(np.int64)).reshape(-1),
            reduction="none",
        )
        w = torch.from_numpy(batches["weights"][k]).reshape(-1)
        loss = (nll * w).sum() / w.sum().clamp(min=1.0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())
