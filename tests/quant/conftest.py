"""Fixtures of the native-kernel tests."""

import pytest


@pytest.fixture
def native_kernels(monkeypatch):
    """The suite runs with eight fake CPU devices, where the native kernels are off by default
    (they would gather split weights: `native._one_device`); tests that use this fixture ask for
    them."""
    monkeypatch.setenv("PQM_NATIVE", "1")


@pytest.fixture
def portable_kernel(tmp_path):
    """`register(source, symbol) -> target`: builds a kernel source without AVX-512 (the loops
    any CPU runs) into a temporary cache and registers its FFI handler `symbol` under a new CPU
    target, whose name it returns."""
    import jax

    from pqm_jax.quant import native
    from pqm_jax.quant.native import build

    def register(source, symbol: str) -> str:
        flags = (*build.FLAGS, "-mno-avx512f")
        lib = build.load(source, cxx=build.compiler(), cache=tmp_path, flags=flags)
        name = f"{symbol}_portable_test"
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
        native._loaded.append(lib)  # XLA keeps the handler: never unload the library
        return name

    return register
