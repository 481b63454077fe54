"""Reading the JSON files a model or a run keeps (config.json, model.json, ...), with errors that
name the file and what to do instead of a bare `JSONDecodeError`."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


class DamagedFile(ValueError):
    """A JSON file that cannot be read as the object it should hold."""


def read_object(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
    """The JSON object in `path` ("what" says what the file is, for the message).

    Raises:
      FileNotFoundError: no such file.
      DamagedFile: not valid JSON, or not an object (names the file, the position, the fix).
    """
    path = pathlib.Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path} is damaged ({e}); it is {what}: restore it") from None
    if not isinstance(value, dict):
        raise DamagedFile(f"{path} holds a {type(value).__name__}, not {what}")
    return value


def fields(values: dict[str, Any], types: dict[str, type], path: str | os.PathLike) -> None:
    """DamagedFile naming the file and key for a value of the wrong type (bool is no int)."""
    for key, tp in types.items():
        if key in values:
            v = values[key]
            if (tp is int and isinstance(v, bool)) or not isinstance(v, tp):
                raise DamagedFile(
                    f"{path}: {key!r} must be {tp.__name__}, got {v!r:.60} ({type(v).__name__})"
                )
