"""Named plug-ins (model families, corpus sources): one registry, built-ins imported on demand.

A registry lists the modules that register the built-in entries; they are imported on the first
lookup, so importing the registry never imports its plug-ins (no cycles, nothing heavy).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name.

    Args:
      key: the config key that names an entry ("data.source"), for error messages.
      builtin: modules whose import registers the built-in entries.
    """

    def __init__(self, key: str, builtin: tuple[str, ...]) -> None:
        self.key = key
        self.builtin = builtin
        self._entries: dict[str, T] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.builtin:
                importlib.import_module(module)

    def register(self, name: str, entry: T) -> T:
        """Adds `entry` as `name` (re-registering a name replaces it)."""
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(sorted(self._entries))

    def values(self) -> Iterator[T]:
        self._load()
        return iter(list(self._entries.values()))

    def get(self, name: str) -> T:
        """The entry `name`, or KeyError listing the known names."""
        self._load()
        if name not in self._entries:
            raise KeyError(f"{self.key}={name!r} is not one of {', '.join(self.names())}")
        return self._entries[name]
