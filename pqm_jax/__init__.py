"""pqm-jax: personalisation for quantised speech recognisers in JAX.

Submodules are imported lazily so that `import pqm_jax` stays cheap and never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


class PQMWarning(UserWarning):
    """Base class of every warning this package emits (bad input skipped, resampled, ...)."""


_LAZY = {"load_model": ("pqm_jax.api", "load_model")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pqm_jax' has no attribute {name!r}")
