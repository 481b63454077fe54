"""Corpus sources, chosen by `data.source`: each reader registers one `Source`.

A source turns the run's `DataSpec` into a `corpus.Corpus` (target speakers' splits and the
stage-2 pool). Readers shipped with the package are listed in `BUILTIN` and imported on first
use; adding a reader is one new module that calls `register` plus its entry there (or a
`register` call from your own package before the run starts).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pqm_jax import registry

if TYPE_CHECKING:
    from pqm_jax.data import corpus, issues, spec

# Modules that register the built-in sources.
BUILTIN = (
    "pqm_jax.data.synth",
    "pqm_jax.data.fsdd",
    "pqm_jax.data.librispeech",
    "pqm_jax.data.tedlium",
    "pqm_jax.data.manifest",
)
_REGISTRY: registry.Registry[Source] = registry.Registry("data.source", BUILTIN)


@dataclasses.dataclass(frozen=True)
class Source:
    """One corpus reader.

    Attributes:
      name: the `data.source` value.
      build: `build(spec, data_dir, report) -> corpus.Corpus`; sources that make their audio
        (synthetic speakers) write it under `data_dir` (a run's `data/` folder); raises
        `ConfigError` (naming the `data.*` key) for a spec it cannot use.
      list_entries: `list_entries(root, *, report) -> [Entry]` for readers of a folder or file
        (None when the corpus is made, not read).
    """

    name: str
    build: Callable[[spec.DataSpec, pathlib.Path, issues.InputReport], corpus.Corpus]
    list_entries: Callable[..., Any] | None = None


def register(source: Source) -> Source:
    """Adds `source` to the registry (re-registering a name replaces it)."""
    return _REGISTRY.register(source.name, source)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def names() -> tuple[str, ...]:
    """Names of every registered source."""
    return _REGISTRY.names()


def get(name: str) -> Source:
    """The source named `name` (KeyError listing the known names)."""
    return _REGISTRY.get(name)
