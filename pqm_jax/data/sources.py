"""Corpus sources, chosen by `data.source`: each reader registers one `Source`.

A source turns the run's `DataSpec` into a `corpus.Corpus` (target speakers' splits and the
stage-2 pool). Readers shipped with the package are listed in `BUILTIN` and imported on first
use; adding a reader is one new module that calls `register` plus its entry there (or a
`register` call from your own package before the run starts).
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
_SOURCES: dict[str, Source] = {}
_loaded = False


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
    _SOURCES[source.name] = source
    return source


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def names() -> tuple[str, ...]:
    """Names of every registered source."""
    _load_builtin()
    return tuple(sorted(_SOURCES))


def get(name: str) -> Source:
    """The source named `name` (KeyError listing the known names)."""
    _load_builtin()
    if name not in _SOURCES:
        raise KeyError(f"data.source={name!r} is not one of {', '.join(_SOURCES)}")
    return _SOURCES[name]
