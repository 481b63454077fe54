"""Fixtures of the native-kernel tests."""

import pytest


@pytest.fixture
def native_kernels(monkeypatch):
    """The suite runs with eight fake CPU devices, where the native kernels are off by default
    (they would gather split weights: `native._one_device`); tests that use this fixture ask for
    them."""
    monkeypatch.setenv("PQM_NATIVE", "1")
