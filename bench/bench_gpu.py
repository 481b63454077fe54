"""A short accelerator benchmark with nothing but JAX, torch, transformers and PEFT: random
weights in the shapes of Whisper tiny.en, base, small and large-v3 (no downloads, nothing
carried), every figure against a rate measured in the same run.

Sections (bfloat16 compute on an accelerator; float32 on a CPU):
- matmul: the machine's dense matmul rate (a jitted [N, N] x [N, N]), the limit the others are
  read against;
- adaptation: our vmapped stage-3 step (NF4 base, LoRA r 8 on q/k/v/out, AdamW) for banks of
  S slots: seconds per step, model FLOPs per step from XLA's `cost_analysis` (of the same step
  on a dense base with XLA's products only, `limits.xla_only`), their rate as a
  fraction of the matmul rate, and speakers/min for `--steps`-step adaptations; against a
  PyTorch + PEFT loop over the same shapes (transformers Whisper in the same dtype with a
  dense base: bitsandbytes is not there), one speaker after another;
- NF4 matmul: dequantise + dot of a [d, 4d] NF4 weight (block 64, double quantisation) against
  the same dot on a dense weight;
- decoding: greedy tokens/s at batch 8 from the NF4 model (30 s windows).

Run: bash bench/gpu.sh            (or: python bench/bench_gpu.py [--quick] [--json FILE]
       [--models tiny,base,small,large-v3] [--deadline 420])
--quick: tiny only, small banks and windows (proves the script end to end on a CPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import limits
import numpy as np
import report

from pqm_jax import lora as lora_lib
from pqm_jax import sharding
from pqm_jax.models.whisper import decoding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import base as qbase
from pqm_jax.quant import tree as qtree
from pqm_jax.testing import toy
from pqm_jax.train import adapt, optim, steps

# (d_model, layers, heads, mel bins, vocabulary) of the released checkpoints
SHAPES = {
    "tiny": (384, 4, 6, 80, 51864),
    "base": (512, 6, 8, 80, 51865),
    "small": (768, 12, 12, 80, 51865),
    "large-v3": (1280, 32, 20, 128, 51866),
}
# bank sizes per model (the large ones are bounded by one GPU's memory)
SLOTS = {"tiny": (1, 64, 1024), "base": (1, 64, 1024), "small": (1, 64, 256), "large-v3": (1, 8)}
LR = 1e-3


def config(name: str, window_s: float) -> whisper.WhisperConfig:
    d, layers, heads, mels, vocab = SHAPES[name]
    return whisper.WhisperConfig(
        n_mels=mels,
        vocab_size=vocab,
        d_model=d,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_heads=heads,
        decoder_heads=heads,
        encoder_ffn=4 * d,
        decoder_ffn=4 * d,
        max_source_positions=round(window_s * 50),
        max_target_positions=448,
    )


def _time(fn, repeats: int) -> list[float]:
    fn()  # compile / warm up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matmul_rate(n: int, dtype, repeats: int) -> float:
    """FLOP/s of a jitted [n, n] x [n, n] matmul in `dtype`."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    times = _time(lambda: f(a).block_until_ready(), repeats)
    return 2 * n**3 / report.median(times)


def _batch(cfg, shape, tokens: int, seed: int) -> dict:
    batch = toy.random_batch(cfg, shape, seed=seed, tokens=tokens)
    batch["inputs"] %= cfg.vocab_size
    batch["targets"] %= cfg.vocab_size
    return batch


def ours_step(base, cfg, slots: int, tokens: int, dtype: str):
    """(run one vmapped step, model FLOPs of that step) for a bank of `slots` speakers."""
    lc = lora_lib.LoraConfig(rank=8, alpha=16.0, targets=whisper_family.LORA_TARGETS)
    lora = lora_lib.init(base, lc, key=jax.random.key(1))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    base_s = sharding.base_shardings(base, mesh)
    opt_cfg = optim.OptimConfig(name="adamw", learning_rate=LR)
    compile_for = lambda shardings: adapt.compile_programs(
        lora=lora,
        config=steps.StepConfig(model=cfg, dtype=dtype),
        optimizer=opt_cfg,
        mesh=mesh,
        base_shardings=shardings,
        slots=slots,
    )
    programs = compile_for(base_s)
    bank = jax.tree.map(lambda x: jnp.broadcast_to(x, (slots, *x.shape)), lora)
    opt = programs.init_opt(bank)
    data = _batch(cfg, (slots, 1, 1), tokens, seed=slots)
    total = np.full(slots, 10, np.int32)
    vec = [np.zeros(slots, np.int32), total, total, np.ones(slots, bool)]
    vec += [np.arange(slots, dtype=np.int32)]
    args = (bank, opt, base, data, *vec, jax.random.key(0))
    compiled = programs.step.lower(*args).compile()
    # Model FLOPs: the same step on a dense base of the same shapes, XLA's products only, as
    # bench_adapt_limit counts them (the CPU's native 4-bit kernels hide their products from the
    # cost analysis, and a quantised base would add the dequantisation's multiplies).
    dense = jax.eval_shape(qtree.dequantize_tree, base)
    with limits.xla_only():
        counting = compile_for(sharding.base_shardings(dense, mesh))
        flops = limits.flops(counting.step.lower(bank, opt, dense, *args[3:]))

    def run():
        out = compiled(*args)
        jax.block_until_ready(out[2]["loss"])

    return run, flops, lora_lib.num_params(lora)


def peft_step(params: dict, cfg, tokens: int, dtype: str):
    """One PEFT LoRA step of one speaker (transformers Whisper over the same dense weights),
    or None when torch / PEFT are missing."""
    try:
        import peft
        import torch
        import transformers

        from pqm_jax.models.whisper import hf
    except ImportError:
        return None, "not available"
    transformers.logging.set_verbosity_error()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    state = hf.to_state_dict(jax.tree.map(np.asarray, params), cfg)
    hcfg = transformers.WhisperConfig(
        **hf.hf_config_dict(cfg, decoder_start_token_id=1, eos_token_id=2),
        attn_implementation="sdpa",
    )
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(hcfg)
    tensors = {k: torch.from_numpy(np.array(v, np.float32)).to(tdtype) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    lc = peft.LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    )
    model = peft.get_peft_model(model, lc).to(device)
    params_t = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params_t, lr=LR)
    batch = _batch(cfg, (1,), tokens, seed=0)
    mel = torch.from_numpy(batch["mel"]).to(device, tdtype)
    inputs = torch.from_numpy(batch["inputs"].astype(np.int64)).to(device)
    targets = torch.from_numpy(batch["targets"].astype(np.int64)).to(device)

    def run():
        logits = model(input_features=mel, decoder_input_ids=inputs).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return run, f"torch {torch.__version__} + PEFT {peft.__version__} on {device}"


def nf4_matmul(d: int, rows: int, dtype, repeats: int) -> tuple[float, float]:
    """Median seconds of (dequantise + dot, dense dot) for x [rows, d] @ W [d, 4d]."""
    w = jax.random.normal(jax.random.key(0), (d, 4 * d), jnp.float32) * 0.02
    q = qbase.quantize(w, "nf4", block_size=64, double_quant=True)
    x = jnp.ones((rows, d), dtype)
    dense = w.astype(dtype)
    fq = jax.jit(lambda x, q: x @ qbase.dequantize(q, dtype))
    fd = jax.jit(lambda x, w: x @ w)
    tq = report.median(_time(lambda: fq(x, q).block_until_ready(), repeats))
    td = report.median(_time(lambda: fd(x, dense).block_until_ready(), repeats))
    return tq, td


def decode_rate(base, cfg, dtype: str, batch: int, new_tokens: int) -> float:
    """Greedy generated tokens per second at `batch` (30 s windows, NF4 base)."""
    mel = np.random.default_rng(0).normal(size=(batch, cfg.n_mels, 3000)).astype(np.float32)
    # a prompt of 3 tokens and no end token: every row generates `new_tokens`
    opts = decoding.DecodeOptions(prompt=(1, 2, 3), eot=-1, max_new_tokens=new_tokens, dtype=dtype)

    def run():
        res = decoding.generate(base, mel, config=cfg, options=opts)
        jax.block_until_ready(res.tokens)

    times = _time(run, 2)
    return batch * new_tokens / report.median(times)


def measure(args) -> tuple[list[report.Row], list[str]]:
    accel = jax.devices()[0].platform != "cpu"
    dtype = "bfloat16" if accel else "float32"
    jdtype = jnp.bfloat16 if accel else jnp.float32
    n = 1024 if args.quick else 8192
    peak = matmul_rate(n, jdtype, 3 if args.quick else 10)
    rows: list[report.Row] = []
    setting = [
        f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); compute "
        f"{dtype}; matmul rate {peak / 1e12:.3f} TFLOP/s ([{n}, {n}] x [{n}, {n}] {dtype})",
        f"adaptation: window {args.window:g} s, {args.tokens} tokens, batch 1 per speaker, "
        f"{args.steps}-step adaptations; NF4 base (block 64, double quantisation)",
    ]
    t_start = time.perf_counter()
    models = args.models.split(",")
    for name in models:
        if time.perf_counter() - t_start > args.deadline:
            setting.append(f"{name}: skipped (past --deadline {args.deadline:.0f} s)")
            continue
        cfg30 = config(name, 30.0)
        full = whisper.init(cfg30, key=jax.random.key(0))
        base30 = qtree.quantize_tree(
            full, qtree.match_any(toy.QUANT_TARGETS), "nf4", block_size=64, double_quant=True
        )
        base, cfg = whisper_family.window(base30, cfg30, args.window)  # the adaptation window
        params, _ = whisper_family.window(full, cfg30, args.window)
        peer, peer_name = peft_step(params, cfg, args.tokens, dtype)
        t_peer = report.median(_time(peer, 3)) if peer else float("nan")
        slots = (1, 4) if args.quick else SLOTS[name]
        for s in slots:
            if time.perf_counter() - t_start > args.deadline:
                setting.append(f"{name} {s} slots: skipped (past --deadline)")
                break
            try:
                run, flops, n_lora = ours_step(base, cfg, s, args.tokens, dtype)
                t_ours = report.median(_time(run, 3))
            except Exception as e:  # e.g. out of memory for a large bank
                setting.append(f"{name} {s} slots: not measured ({type(e).__name__}: {e!s:.80})")
                continue
            k = args.steps
            rows.append(
                report.row(
                    f"{name}: adaptation, bank of {s}",
                    [60.0 * s / (k * t_ours)],
                    [60.0 / (k * t_peer)],
                    peer_name=f"PEFT loop ({peer_name})",
                    unit="speakers/min",
                    better="higher",
                    note=f"{k}-step adaptations; LoRA {n_lora:,} parameters a speaker",
                )
            )
            rows.append(
                report.row(
                    f"{name}: model FLOP/s of the bank-of-{s} step",
                    [flops / t_ours],
                    [peak],
                    peer_name=f"{dtype} matmul",
                    unit="FLOP/s",
                    better="higher",
                    note=f"{flops / 1e9:.1f} GFLOP a step (XLA's count on a dense base)",
                )
            )
        tq, td = nf4_matmul(cfg.d_model, 256 if args.quick else 4096, jdtype, 5)
        rows.append(
            report.row(
                f"{name}: NF4 dequantise + dot, x [rows, {cfg.d_model}] @ W [{cfg.d_model}, "
                f"{4 * cfg.d_model}]",
                [tq],
                [td],
                peer_name=f"dense {dtype} dot",
                unit="s",
                better="lower",
            )
        )
        if not args.quick or name == models[0]:
            rate = decode_rate(base30, cfg30, dtype, 8, 8 if args.quick else 64)
            rows.append(
                report.row(
                    f"{name}: greedy decoding, batch 8, 30 s windows",
                    [rate],
                    [rate],
                    peer_name="itself (no peer on this machine: CTranslate2 is not there)",
                    unit="tokens/s",
                    better="higher",
                )
            )
        del full, params, base, base30
    setting.append(f"total {time.perf_counter() - t_start:.0f} s")
    return rows, setting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="")
    p.add_argument("--window", type=float, default=0.0, help="adaptation window, s")
    p.add_argument("--tokens", type=int, default=0)
    p.add_argument("--steps", type=int, default=10, help="updates per speaker adaptation")
    p.add_argument("--deadline", type=float, default=420.0, help="stop starting models after")
    p.add_argument("--json", default="")
    args = p.parse_args()
    args.models = args.models or ("tiny" if args.quick else ",".join(SHAPES))
    args.window = args.window or (1.0 if args.quick else 5.0)
    args.tokens = args.tokens or (8 if args.quick else 32)
    rows, setting = measure(args)
    cmd = "python bench/bench_gpu.py" + (" --quick" if args.quick else "")
    report.emit(rows, setting, cmd, args.json or None)


if __name__ == "__main__":
    main()
