"""The process-wide cache of jitted programs: one compiled executable per distinct program.

Training, a resumed run and the evaluation that follows in the same process ask for the same
jitted objects by key, so XLA compiles each program once per process.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

_PROGRAMS: dict[Any, Any] = {}
_MAX_PROGRAMS = 16


def cached(key: Any, build: Any) -> Any:
    """`build()` once per `key` in this process (at most 16 entries are kept)."""
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def clear() -> None:
    """Forget every cached program, so that its executable can be freed (long-lived processes,
    such as a test session, that compile many programs; see tests/conftest.py)."""
    _PROGRAMS.clear()


def tree_key(tree: Any) -> tuple:
    """A hashable description of a pytree: structure (with static fields), shapes, dtypes, and
    the shardings when the leaves are shardings."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(
        x if isinstance(x, jax.sharding.Sharding) else (np.shape(x), str(x.dtype)) for x in leaves
    )
