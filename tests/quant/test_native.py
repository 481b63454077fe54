"""The native CPU 4-bit decode: bit for bit the XLA path (and an independent NumPy decode) under
jit, vmap, grad, bfloat16 output and forced thread splits; and a clean fallback to XLA when it is
switched off, cannot be built, or finds a corrupt cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax.quant import fourbit, fp4, native, nf4
from pqm_jax.quant.native import build

needs_kernel = pytest.mark.skipif(
    not native.available(), reason="native kernel unavailable (no C++ compiler?)"
)


pytestmark = pytest.mark.usefixtures("native_kernels")  # tests/quant/conftest.py


CASES = [
    ((256, 512), 64),
    ((1536, 384), 32),
    ((64, 4096), 4096),
    ((5, 7, 128), 128),
    ((3, 2048), 256),
]


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def _numpy_decode(q) -> np.ndarray:
    """Independent decode: nibbles -> code values x block absmax (two roundings under double
    quantisation), float32, with XLA's flush-to-zero of subnormal products."""
    codes = np.asarray(q.codes)
    idx = np.stack([codes >> 4, codes & 15], axis=-1).reshape(-1, q.block_size)
    if q.double_quant:
        scale = np.repeat(np.asarray(q.absmax_scale), fourbit.ABSMAX_BLOCK)[: q.absmax.shape[0]]
        absmax = fourbit.DYNAMIC_MAP[np.asarray(q.absmax)] * scale + np.asarray(q.absmax_offset)
    else:
        absmax = np.asarray(q.absmax)
    out = q.TABLE[idx] * absmax[:, None]
    out[np.abs(out) < np.finfo(np.float32).tiny] *= 0  # keeps the sign of zero
    return out.reshape(q.shape)


def _xla(fn, *args):
    """`fn(*args)` jitted with the kernel switched off: the XLA path."""
    with mock.patch.object(native, "available", lambda: False):
        return jax.jit(fn)(*args)


def _quantize(mod, shape, block, double_quant, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * rng.uniform(1e-3, 1e3)
    return mod.quantize(x, block_size=block, double_quant=double_quant)


@needs_kernel
def test_kernel_is_lowered_on_cpu_and_not_when_switched_off():
    q = _quantize(nf4, (64, 128), 64, False)
    assert native.TARGET in jax.jit(lambda q: q.dequantize()).lower(q).as_text()
    with mock.patch.object(native, "available", lambda: False):
        assert native.TARGET not in jax.jit(lambda q: q.dequantize()).lower(q).as_text()


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("mod", [nf4, fp4])
@pytest.mark.parametrize(("shape", "block"), CASES)
def test_native_equals_xla_bit_for_bit(mod, double_quant, shape, block):
    q = _quantize(mod, shape, block, double_quant, seed=block)
    ours = jax.jit(lambda q: q.dequantize())(q)
    np.testing.assert_array_equal(_bits(ours), _bits(_xla(lambda q: q.dequantize(), q)))
    np.testing.assert_array_equal(_bits(ours), _bits(_numpy_decode(q)))
    np.testing.assert_array_equal(_bits(q.dequantize()), _bits(ours))  # eager too


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_thread_splits_equal_and_flush_subnormals_like_xla(threads):
    """Every split of the blocks over threads gives the same bits, and worker threads inherit
    XLA's flush-to-zero: tiny and subnormal absmax give zero products there as in XLA."""
    rng = np.random.default_rng(threads)
    n_blocks, block = 40, 32
    codes = jnp.asarray(rng.integers(0, 256, n_blocks * block // 2, dtype=np.uint8))
    absmax = rng.uniform(0.5, 2.0, n_blocks).astype(np.float32)
    absmax[::4] = np.float32(2e-38)  # normal, but most products are subnormal
    absmax[1::4] = np.float32(3e-39)  # a subnormal input
    absmax = jnp.asarray(absmax)
    for table in (nf4.TABLE, fp4.TABLE):
        xla = lambda c, a, table=table: fourbit._lookup(table, c, a, block)
        ours = jax.jit(
            lambda c, a, table=table, xla=xla: native.decode(
                c, a, table=table, block=block, xla=xla, threads=threads
            )
        )(codes, absmax)
        ref = jax.jit(xla)(codes, absmax).reshape(-1)
        np.testing.assert_array_equal(_bits(ours), _bits(ref))
        ours = np.abs(np.asarray(ours).reshape(n_blocks, block))
        assert np.all((ours[0] == 0) | (ours[0] >= np.finfo(np.float32).tiny))
        assert np.any(ours[0] > 0) and not np.any(ours[1])


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
def test_bfloat16_output_equals_xla(double_quant):
    q = _quantize(nf4, (128, 256), 64, double_quant)
    ours = jax.jit(lambda q: q.dequantize(jnp.bfloat16))(q)
    ref = _xla(lambda q: q.dequantize(jnp.bfloat16), q)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(ours).view(np.uint16), np.asarray(ref).view(np.uint16))


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
def test_vmap_over_a_stack_of_tensors(double_quant):
    qs = [_quantize(fp4, (32, 256), 64, double_quant, seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *qs)
    ours = jax.jit(jax.vmap(lambda q: q.dequantize()))(stacked)
    assert ours.shape == (3, 32, 256)
    for i, q in enumerate(qs):
        np.testing.assert_array_equal(_bits(ours[i]), _bits(_numpy_decode(q)))
    ref = _xla(jax.vmap(lambda q: q.dequantize()), stacked)
    np.testing.assert_array_equal(_bits(ours), _bits(ref))


@needs_kernel
@pytest.mark.parametrize("double_quant", [False, True])
def test_grad_through_a_frozen_dequantised_weight(double_quant):
    """A loss on dequant(W) @ B: the gradient in the trainable B matches the XLA path's, and the
    gradient in W's (float) absmax, taken through the kernel's custom JVP, matches too."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 128)).astype(np.float32) * 0.05
    q = nf4.quantize(w, double_quant=double_quant)
    b = jnp.asarray(rng.standard_normal((128, 8)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((4, 64)), jnp.float32)

    def loss(b, q):
        return jnp.sum(jnp.tanh(x @ q.dequantize() @ b))

    ours = jax.jit(jax.grad(loss))(b, q)
    np.testing.assert_allclose(ours, _xla(jax.grad(loss), b, q), rtol=1e-6, atol=0)
    assert np.any(np.asarray(ours) != 0)

    def by_weight(q):
        return jax.grad(loss, argnums=1, allow_int=True)(b, q)

    ours_w = jax.jit(by_weight)(q)
    ref_w = _xla(by_weight, q)
    field = "absmax_scale" if double_quant else "absmax"
    np.testing.assert_allclose(getattr(ours_w, field), getattr(ref_w, field), rtol=1e-5, atol=1e-7)
    assert np.any(np.asarray(getattr(ours_w, field)) != 0)


@needs_kernel
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="-mno-avx512f is an x86 flag")
def test_portable_scalar_kernel_equals_xla(portable_kernel):
    """The same source built without AVX-512 (the loop any CPU runs) gives the same bits, and both
    builds handle blocks that are not a multiple of the vector width."""
    name = portable_kernel(native.SOURCE, "PqmFourBitDecode")
    rng = np.random.default_rng(5)
    cases = ((32, 30, 1), (64, 17, 3), (2, 50, 2), (48, 9, 2), (34, 5, 1), (4096, 3, 0))
    for target in (name, native.TARGET):  # odd blocks (2, 48, 34) take the vector loop's tail
        for block, n_blocks, threads in cases:
            codes = jnp.asarray(rng.integers(0, 256, n_blocks * block // 2, dtype=np.uint8))
            absmax = jnp.asarray(rng.uniform(0, 5, n_blocks), jnp.float32)
            out = jax.ShapeDtypeStruct((n_blocks * block,), jnp.float32)
            ours = jax.ffi.ffi_call(target, out)(
                codes,
                absmax,
                jnp.asarray(fp4.TABLE),
                block=np.int64(block),
                threads=np.int64(threads),
            )
            ref = fourbit._lookup(fp4.TABLE, codes, absmax, block).reshape(-1)
            np.testing.assert_array_equal(_bits(ours), _bits(ref), err_msg=f"{target} {block}")


@needs_kernel
@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_block_sharded_tensor_decodes_alike(axis_type):
    """Split over a mesh: Auto sharding gathers into the kernel; an Explicit split (part of the
    array's type) stays on the XLA path, which keeps it. Same bits both ways."""
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 (fake) devices")
    from pqm_jax import sharding

    kind = getattr(jax.sharding.AxisType, axis_type)
    mesh = jax.make_mesh((1, 4), ("data", "model"), axis_types=(kind, kind))
    q = _quantize(nf4, (256, 128), 64, False)
    qs = jax.device_put(q, sharding.quantized_sharding(q, mesh))
    fn = jax.jit(lambda q: q.dequantize())
    with jax.sharding.set_mesh(mesh):
        ours = fn(qs)
        lowered = native.TARGET in fn.lower(qs).as_text()
    assert lowered == (axis_type == "Auto")
    np.testing.assert_array_equal(_bits(ours), _bits(_numpy_decode(q)))


@needs_kernel
def test_inputs_the_kernel_does_not_take_go_to_xla():
    codes = jnp.zeros((4, 16), jnp.uint8)  # 2-D: not the kernel's layout
    absmax = jnp.ones((4,), jnp.float32)
    xla = lambda c, a: fourbit._lookup(nf4.TABLE, c, a, 32)
    fn = lambda c, a: native.decode(c, a, table=nf4.TABLE, block=32, xla=xla)
    assert native.TARGET not in jax.jit(fn).lower(codes, absmax).as_text()
    np.testing.assert_array_equal(fn(codes, absmax), np.full(128, nf4.TABLE[0], np.float32))


@needs_kernel
def test_kernel_rejects_partial_blocks():
    call = jax.ffi.ffi_call(native.TARGET, jax.ShapeDtypeStruct((64,), jnp.float32))
    with pytest.raises(Exception, match="whole blocks"):
        call(
            jnp.zeros((32,), jnp.uint8),
            jnp.ones((3,), jnp.float32),  # 3 blocks of 32 would need 48 bytes
            jnp.asarray(nf4.TABLE),
            block=np.int64(32),
            threads=np.int64(0),
        ).block_until_ready()


def test_library_path_is_keyed_on_compiler(tmp_path):
    a = build.library_path(native.SOURCE, cxx="c++", cache=tmp_path)
    assert a == build.library_path(native.SOURCE, cxx="c++", cache=tmp_path)
    assert a != build.library_path(native.SOURCE, cxx="clang++", cache=tmp_path)
    assert a.parent == tmp_path and a.suffix == ".so"


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "false"])
def test_failed_build_raises_and_leaves_no_file(tmp_path, cxx):
    with pytest.raises((OSError, subprocess.CalledProcessError)):
        build.build(native.SOURCE, cxx=cxx, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_kernel
def test_corrupt_cached_library_is_rebuilt(tmp_path):
    cxx = build.compiler()
    path = build.library_path(native.SOURCE, cxx=cxx, cache=tmp_path)
    path.write_bytes(b"not a shared library")
    lib = build.load(native.SOURCE, cxx=cxx, cache=tmp_path)
    assert lib.PqmFourBitDecode is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


_CHILD = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    import jax, numpy as np
    from pqm_jax.quant import native, nf4
    q = nf4.quantize(np.linspace(-3, 3, 64 * 256, dtype=np.float32).reshape(64, 256),
                     double_quant=True)
    f = jax.jit(lambda q: q.dequantize())
    out = np.asarray(f(q))
    np.asarray(q.dequantize())  # a second use: the failure is logged once, not again
    np.savez(sys.argv[1], out=out, codes=q.codes, absmax=q.absmax, scale=q.absmax_scale,
             offset=q.absmax_offset)
    print(json.dumps({"available": native.available(),
                      "lowered": native.TARGET in f.lower(q).as_text()}))
    """
)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PQM_NATIVE": "0"}, "PQM_NATIVE=0"),
        ({"PQM_CXX": "/nonexistent/c++"}, "native 4-bit decode unavailable"),
    ],
)
def test_fallback_in_a_fresh_process(tmp_path, env, message):
    """Switched off, or with no compiler, a process decodes with XLA, gets the same bits, and
    says so in one log line."""
    child_env = {**os.environ, "PQM_CACHE_DIR": str(tmp_path / "cache"), **env}
    child_env.pop("XLA_FLAGS", None)  # one device is enough, and starts faster
    out_file = tmp_path / "out.npz"
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out_file)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    status = json.loads(res.stdout.strip().splitlines()[-1])
    assert status == {"available": False, "lowered": False}
    assert sum(message in line for line in res.stderr.splitlines()) == 1
    saved = np.load(out_file)
    q = nf4.NF4Tensor(
        codes=saved["codes"],
        absmax=saved["absmax"],
        absmax_scale=saved["scale"],
        absmax_offset=saved["offset"],
        shape=(64, 256),
        block_size=64,
        dtype="float32",
    )
    np.testing.assert_array_equal(_bits(saved["out"]), _bits(_numpy_decode(q)))


@needs_kernel
def test_several_devices_keep_the_xla_path_unless_asked(monkeypatch):
    """With several devices (here the suite's fake ones) a sharded weight would be gathered whole
    into the kernel, so the XLA path is lowered by default; PQM_NATIVE=1 asks for the kernel."""
    if jax.device_count() < 2:
        pytest.skip("needs several (fake) devices")
    q = nf4.quantize(np.random.default_rng(9).standard_normal((64, 128)).astype(np.float32))
    monkeypatch.delenv("PQM_NATIVE", raising=False)
    assert native.TARGET not in jax.jit(lambda q: q.dequantize()).lower(q).as_text()
    monkeypatch.setenv("PQM_NATIVE", "1")
    assert native.TARGET in jax.jit(lambda q: q.dequantize()).lower(q).as_text()
