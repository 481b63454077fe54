"""Writes tests/quant/fixtures/bnb_4bit.npz: inputs and bitsandbytes' 4-bit outputs for them.

Run: python scripts/make_nf4_fixtures.py  (needs torch and bitsandbytes; CPU is enough).
Each case stores the float32 input, the packed codes and float32 absmax of `quantize_4bit`, and the
`dequantize_4bit` output with double quantisation (compress_statistics=True).
"""

from __future__ import annotations

import pathlib

import bitsandbytes
import bitsandbytes.functional as bnbf
import numpy as np
import torch

CASES = [  # (name, shape, block_size, quant_type, generator)
    ("normal_48x64_b64", (48, 64), 64, "nf4", "normal"),
    ("normal_7x33_b64", (7, 33), 64, "nf4", "normal"),
    ("odd_1001_b32", (1001,), 32, "nf4", "normal"),
    ("heavy_3x5x129_b128", (3, 5, 129), 128, "nf4", "student"),
    ("partial_300_b4096", (300,), 4096, "nf4", "uniform"),
    ("zero_block_2x64_b64", (2, 64), 64, "nf4", "zero_block"),
    ("zero_tail_100_b64", (100,), 64, "nf4", "zero_tail"),
    ("ties_128_b64", (128,), 64, "nf4", "ties"),
    ("fp4_normal_48x40_b64", (48, 40), 64, "fp4", "normal"),
    ("wide_32x512_b256", (32, 512), 256, "nf4", "normal"),
]


def make_input(shape, kind, rng):
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "student":
        return rng.standard_t(3, shape).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(-3, 3, shape).astype(np.float32)
    if kind == "zero_block":
        x = rng.standard_normal(shape).astype(np.float32)
        x[0] = 0.0
        return x
    if kind == "zero_tail":  # the partial last block is all zero
        x = rng.standard_normal(shape).astype(np.float32)
        x[-(x.size % 64) :] = 0.0
        return x
    if kind == "ties":  # values exactly on NF4 midpoints (after scaling by an absmax of 1)
        from pqm_jax.quant import nf4

        mids = (nf4.TABLE[:-1] + nf4.TABLE[1:]) / np.float32(2)
        x = rng.choice(np.concatenate([mids, nf4.TABLE]), size=shape).astype(np.float32)
        x[::64] = 1.0
        return x
    raise ValueError(kind)


def main() -> None:
    rng = np.random.default_rng(20261125)
    out = {"bitsandbytes_version": np.array(bitsandbytes.__version__)}
    for name, shape, bs, qt, kind in CASES:
        x = make_input(shape, kind, rng)
        t = torch.from_numpy(x)
        packed, state = bnbf.quantize_4bit(t, blocksize=bs, quant_type=qt)
        packed2, state2 = bnbf.quantize_4bit(
            t, blocksize=bs, quant_type=qt, compress_statistics=True
        )
        out[f"{name}/x"] = x
        out[f"{name}/codes"] = packed.numpy().reshape(-1)
        out[f"{name}/absmax"] = state.absmax.numpy()
        out[f"{name}/dequant"] = bnbf.dequantize_4bit(packed, state).numpy()
        out[f"{name}/dequant_dq"] = bnbf.dequantize_4bit(packed2, state2).numpy()
        out[f"{name}/absmax_codes_dq"] = state2.absmax.numpy()
        out[f"{name}/meta"] = np.array([bs, 1 if qt == "fp4" else 0])
    path = pathlib.Path(__file__).resolve().parents[1] / "tests/quant/fixtures/bnb_4bit.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
