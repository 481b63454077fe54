"""Text normalisers for scoring: Whisper's English normaliser (with its spelling map), Whisper's
basic normaliser, and spoken digits."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
from typing import Any

from pqm_jax import resources
from pqm_jax.text.transcripts import DIGIT_WORDS


@functools.cache
def english_normalizer(spelling_json: str | os.PathLike | None = None) -> Any:
    """transformers' copy of Whisper's `EnglishTextNormalizer` with the spelling map at
    `spelling_json` (default: `resources.whisper_english_json()`); cached per path."""
    # transformers 5 keeps openai-whisper's normaliser here, without the spelling map.
    from transformers.models.whisper import english_normalizer as impl

    path = pathlib.Path(spelling_json or resources.whisper_english_json())
    return impl.EnglishTextNormalizer(json.loads(path.read_text(encoding="utf-8")))


def normalize_english(text: str) -> str:
    """Whisper's English normaliser (spelling map, numbers, contractions, fillers, symbols), as
    used for Whisper's published WERs. Needs `english.json` (see `resources`)."""
    return english_normalizer()(text)


def normalize_basic(text: str) -> str:
    """Whisper's language-agnostic normaliser (lower-case, brackets and symbols removed)."""
    from transformers.models.whisper import english_normalizer

    return english_normalizer.BasicTextNormalizer()(text)


def normalize_digits(text: str) -> str:
    """Scoring form for spoken digits: lower-case, apostrophes dropped, other punctuation a space,
    every digit its own word, digits written as words: "7,031." -> "seven zero three one",
    "Seven-three" -> "seven three"."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    text = re.sub(r"[^\w\s]|_", " ", text)
    text = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text)
    return " ".join(text.split())
