"""NF4/FP4 against bitsandbytes: stored fixtures (always) and a live comparison (when installed)."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.quant import fourbit, fp4, nf4

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "bnb_4bit.npz"


def _cases():
    data = np.load(FIXTURES)
    names = sorted({k.split("/")[0] for k in data.files if "/" in k})
    return data, names


DATA, NAMES = _cases()


@pytest.mark.parametrize("name", NAMES)
def test_codes_and_absmax_equal_bitsandbytes_fixture(name):
    x = DATA[f"{name}/x"]
    block, is_fp4 = (int(v) for v in DATA[f"{name}/meta"])
    mod = fp4 if is_fp4 else nf4
    q = mod.quantize(x, block_size=block)
    np.testing.assert_array_equal(np.asarray(q.codes), DATA[f"{name}/codes"])
    np.testing.assert_array_equal(np.asarray(q.absmax), DATA[f"{name}/absmax"])
    # bitsandbytes returns a 1-D input as [1, n]; we keep the original shape.
    np.testing.assert_array_equal(
        np.asarray(mod.dequantize(q)).reshape(-1), DATA[f"{name}/dequant"].reshape(-1)
    )
    assert q.dequantize().shape == x.shape


def _one_step(codes: np.ndarray) -> np.ndarray:
    """For each 8-bit code index, the larger gap to its neighbours in the dynamic map."""
    gaps = np.diff(fourbit.DYNAMIC_MAP)
    left = np.concatenate([[0.0], gaps])[codes]
    right = np.concatenate([gaps, [0.0]])[codes]
    return np.maximum(left, right)


@pytest.mark.parametrize("name", NAMES)
def test_double_quant_within_one_absmax_step_of_bitsandbytes_fixture(name):
    """bitsandbytes' CPU kernel finds the 8-bit absmax code by an approximate binary search, so its
    code can differ from the nearest one; our dequantised weights must stay within one step of its
    code (scaled by the 256-block scale), times the largest 4-bit code value."""
    x = DATA[f"{name}/x"]
    block, is_fp4 = (int(v) for v in DATA[f"{name}/meta"])
    mod = fp4 if is_fp4 else nf4
    q = mod.quantize(x, block_size=block, double_quant=True)
    assert q.double_quant and q.absmax.dtype == np.uint8
    ref_codes = DATA[f"{name}/absmax_codes_dq"]
    n_blocks = ref_codes.shape[0]
    scale = np.repeat(np.asarray(q.absmax_scale), fourbit.ABSMAX_BLOCK)[:n_blocks]
    step = _one_step(ref_codes) * scale
    bound = np.repeat(step, block)[: x.size] * (1 + 1e-5) + 1e-6
    ours = np.asarray(q.dequantize()).reshape(-1)
    ref = DATA[f"{name}/dequant_dq"].reshape(-1)
    assert np.all(np.abs(ours - ref) <= bound)
    # and most absmax codes are identical (with few blocks, absmax - mean can be exactly 0, which
    # bitsandbytes codes as 255 (0/0) and we as 127; both decode to the same absmax)
    if n_blocks >= 16:
        assert np.mean(np.asarray(q.absmax) == ref_codes) > 0.95


def test_fixture_was_made_by_bitsandbytes():
    assert str(DATA["bitsandbytes_version"]).count(".") >= 1


# ---- live comparison with bitsandbytes on random tensors of several shapes ----

bnb_f = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes not installed")
torch = pytest.importorskip("torch")

SHAPES = [((384, 384), 64), ((1536, 384), 64), ((5, 7, 11), 32), ((4097,), 128), ((51, 77), 4096)]


@pytest.mark.parametrize(("shape", "block"), SHAPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_live_bitsandbytes_parity(shape, block, quant_type):
    rng = np.random.default_rng(hash((shape, block)) % 2**32)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10)).astype(np.float32)
    packed, state = bnb_f.quantize_4bit(torch.from_numpy(x), blocksize=block, quant_type=quant_type)
    mod = nf4 if quant_type == "nf4" else fp4
    q = mod.quantize(x, block_size=block)
    np.testing.assert_array_equal(np.asarray(q.codes), packed.numpy().reshape(-1))
    np.testing.assert_array_equal(np.asarray(q.absmax), state.absmax.numpy())
    ref = bnb_f.dequantize_4bit(packed, state).numpy().reshape(shape)
    np.testing.assert_array_equal(np.asarray(q.dequantize(jnp.float32)), ref)


def test_dynamic_map_equals_bitsandbytes():
    ref = bnb_f.create_dynamic_map(signed=True).numpy()
    np.testing.assert_allclose(fourbit.DYNAMIC_MAP, ref, rtol=0, atol=1e-7)
    assert fourbit.DYNAMIC_MAP[127] == 0.0


def test_code_tables_equal_bitsandbytes():
    np.testing.assert_array_equal(nf4.TABLE, bnb_f.get_4bit_type("nf4", device="cpu").numpy())
    np.testing.assert_array_equal(fp4.TABLE, bnb_f.get_4bit_type("fp4", device="cpu").numpy())
