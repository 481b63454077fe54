"""The price of NF4's table lookup: a forward pass of NF4 Whisper against the same model in
float32, and the weight bytes of each against NF4's physical floor.

Forward = encoder + teacher-forced decoder (logits over the vocabulary), one jitted function,
same random log-mel and token ids for both; the two models run interleaved, compilation and
one warm-up call excluded. NF4: block 64 with double quantisation on the paper's targets
(attention/MLP kernels, convolutions, token embedding; the Whisper family's `QUANT_TARGETS`); dequantisation
happens inside the jitted forward (every call pays it).

Memory: bytes of the weights pytree (`quant.tree.tree_nbytes`), the whole model and only the
quantised parameters, and bits per quantised weight against 4 + 8/64 + 32/(64*256) = 4.127
(4-bit codes, an 8-bit absmax per 64-block, a float32 second-level absmax per 256 blocks).

Run: python bench/bench_forward.py [--model tiny.en] [--window 30] [--batch 1] [--tokens 32]
       [--repeats 5] [--json rows.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import limits
import numpy as np
import report

from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import base as qbase
from pqm_jax.quant import tree as qtree
from pqm_jax.run import backbone
from pqm_jax.run import config as config_lib

FLOOR_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # NF4, block 64, double quantisation


def quantized_stats(params) -> tuple[int, int]:
    """(stored bytes, logical weights) of the quantised leaves of `params`."""
    leaves = jax.tree.leaves(params, is_leaf=qbase.is_quantized)
    quantized = [x for x in leaves if qbase.is_quantized(x)]
    return sum(qtree.tree_nbytes(x) for x in quantized), sum(x.size for x in quantized)


def _forward(config: whisper.WhisperConfig):
    def fwd(params, mel, tokens):
        enc = whisper.encode(params, mel, config=config)
        return whisper.decode(params, tokens, enc, config=config)

    return jax.jit(fwd)


def _time(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def measure(
    model: str, window: float, batch: int, tokens: int, repeats: int
) -> tuple[list[report.Row], list[str]]:
    """Rows (forward seconds, bytes, bits per weight) and the setting lines."""
    spec = config_lib.ModelSpec(name=model, audio_window_s=window)
    full, cfg, _ = spec.family.load(spec, seed=0, folder=None)
    full = jax.tree.map(jax.numpy.asarray, full)
    nf4 = backbone.quantize(full, spec)
    full_w, cfg_w = spec.family.window(full, cfg, window)
    nf4_w, _ = spec.family.window(nf4, cfg, window)
    rng = np.random.default_rng(0)
    mel = rng.normal(size=(batch, cfg.n_mels, 2 * cfg_w.max_source_positions)).astype(np.float32)
    ids = rng.integers(0, cfg.vocab_size, size=(batch, tokens)).astype(np.int32)
    fwd = _forward(cfg_w)
    jax.block_until_ready(fwd(nf4_w, mel, ids))  # compile + warm up each
    jax.block_until_ready(fwd(full_w, mel, ids))
    t_nf4, t_fp32 = [], []
    for _ in range(repeats):
        t_nf4.append(_time(fwd, nf4_w, mel, ids))
        t_fp32.append(_time(fwd, full_w, mel, ids))
    with limits.xla_only():  # the attention kernel's products counted too
        flops = limits.flops(_forward(cfg_w).lower(full_w, mel, ids))
    rate = limits.matmul_rate(repeats=repeats)
    q_bytes, q_n = quantized_stats(nf4)
    fp32_same = 4 * q_n  # the same parameters in float32
    rows = [
        report.row(
            f"forward (encoder + teacher-forced decoder), batch {batch}, {window:g} s, "
            f"{tokens} tokens",
            t_nf4,
            t_fp32,
            peer_name="same model in float32",
            unit="s",
            better="lower",
            limit=flops / np.median(t_nf4) / rate,
            limit_name=limits.describe_rate(rate),
            note=f"{flops / 1e9:.1f} GFLOP a call (XLA cost analysis)",
        ),
        report.Row(
            "weights pytree, whole model",
            qtree.tree_nbytes(nf4),
            qtree.tree_nbytes(full),
            peer_name="float32",
            unit="bytes",
            better="lower",
            runs=1,
            note="exact, not timed",
        ),
        report.Row(
            f"quantised parameters only ({q_n:,} weights)",
            q_bytes,
            fp32_same,
            peer_name="float32",
            unit="bytes",
            better="lower",
            runs=1,
            note="exact",
        ),
        report.Row(
            "bits per quantised weight",
            8 * q_bytes / q_n,
            FLOOR_BITS,
            peer_name="NF4 double-quant floor 4 + 8/64 + 32/(64*256)",
            unit="bits/weight",
            better="lower",
            runs=1,
            note="exact; above the floor = partial blocks and per-tensor constants",
        ),
    ]
    setting = [
        f"Whisper {model}, NF4 block 64 + double quantisation on {len(spec.targets())} "
        f"target patterns ({q_n:,} of {qtree.tree_num_params(full):,} weights), "
        f"{cfg_w.max_source_positions} encoder positions ({window:g} s), random log-mel and "
        f"token ids, float32 activations, device {jax.devices()[0].platform}",
    ]
    return rows, setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny.en", choices=("tiny.en", "base"))
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the rows here (for bench/run_all.py)")
    args = ap.parse_args()
    rows, setting = measure(args.model, args.window, args.batch, args.tokens, args.repeats)
    report.emit(rows, setting, "python bench/bench_forward.py", args.json)


if __name__ == "__main__":
    main()
