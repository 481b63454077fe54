"""Whisper's tokenizer (special ids, prompts) and the text normalisers used for scoring.

The tokenizer is the byte-level BPE of a model folder's `tokenizer.json` (CTranslate2 and HF
folders both ship one), run by the `tokenizers` library. Whisper's special tokens all come after
the text tokens: every id >= `<|endoftext|>` is special, timestamps start at
`<|notimestamps|>` + 1 (they are in the model's vocabulary, not in the tokenizer's).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import tokenizers

from pqm_jax import jsonio

_LANGUAGE = re.compile(r"^<\|([a-z]{2,3}(?:-[a-z]+)?)\|>$")  # <|en|>, <|haw|>, <|yue|>


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of Whisper's control tokens (they differ by one between English-only and
    multilingual vocabularies)."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int  # <|nocaptions|> in older vocabularies
    no_timestamps: int
    languages: Mapping[str, int]  # "en" -> id of <|en|>

    @property
    def timestamp_begin(self) -> int:
        """Id of `<|0.00|>`; timestamp `i` (0.02 s steps) is `timestamp_begin + i`."""
        return self.no_timestamps + 1


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """A Whisper tokenizer with its decoding constraints (from the model's config)."""

    backend: tokenizers.Tokenizer
    special: SpecialIds
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    multilingual: bool = False

    def encode(self, text: str, *, leading_space: bool = False) -> list[int]:
        """Text tokens only (no specials). Whisper transcripts start with a space (" Seven."):
        `leading_space=True` adds one to stripped text, for training targets."""
        if leading_space:
            text = " " + text.strip()
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if any(i >= self.special.eot for i in ids):  # a backend that matches special tokens
            raise ValueError(f"{text!r} encodes to special tokens; set encode_special_tokens")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with every special and timestamp token skipped, whitespace stripped."""
        text_ids = [int(i) for i in ids if int(i) < self.special.eot]
        return self.backend.decode(text_ids, skip_special_tokens=False).strip()

    def piece(self, token: int) -> str:
        """One token's text as it sits in a transcript, leading space kept (" Hello")."""
        return self.backend.decode([int(token)], skip_special_tokens=False)

    def prompt(
        self, language: str | None = "en", task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """Decoder prompt: `<|startoftranscript|><|notimestamps|>` for English-only models,
        `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>` for multilingual ones
        (without `<|notimestamps|>` when `timestamps`)."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
        ids = [self.special.sot]
        if self.multilingual:
            if language is None:
                raise ValueError("a multilingual model needs a language (e.g. 'en')")
            if language not in self.special.languages:
                raise ValueError(f"unknown language {language!r}; known: {self.languages()}")
            ids += [self.special.languages[language], getattr(self.special, task)]
        elif language not in (None, "en") or task != "transcribe":
            raise ValueError(
                f"an English-only model only transcribes English (got {language=}, {task=})"
            )
        if not timestamps:
            ids.append(self.special.no_timestamps)
        return ids

    def languages(self) -> list[str]:
        """Language codes of the vocabulary, in id order."""
        return sorted(self.special.languages, key=self.special.languages.__getitem__)


def _special_ids(backend: tokenizers.Tokenizer) -> SpecialIds:
    def tid(*tokens: str) -> int:
        for token in tokens:
            i = backend.token_to_id(token)
            if i is not None:
                return i
        raise ValueError(f"the tokenizer has no {tokens[0]}: not a Whisper tokenizer")

    eot, sot, translate = tid("<|endoftext|>"), tid("<|startoftranscript|>"), tid("<|translate|>")
    languages = {}
    for i in range(sot + 1, translate):
        m = _LANGUAGE.match(backend.id_to_token(i) or "")
        if m:
            languages[m.group(1)] = i
    return SpecialIds(
        eot=eot,
        sot=sot,
        translate=translate,
        transcribe=tid("<|transcribe|>"),
        sot_lm=tid("<|startoflm|>"),
        sot_prev=tid("<|startofprev|>"),
        no_speech=tid("<|nospeech|>", "<|nocaptions|>"),
        no_timestamps=tid("<|notimestamps|>"),
        languages=languages,
    )


def from_backend(
    backend: tokenizers.Tokenizer,
    *,
    suppress_tokens: Iterable[int] = (),
    begin_suppress_tokens: Iterable[int] = (),
    multilingual: bool | None = None,
) -> Tokenizer:
    """Wraps a `tokenizers.Tokenizer`. `multilingual` defaults to the vocabulary's kind: GPT-2's
    50,256 text tokens (English-only) or 50,257 (multilingual)."""
    special = _special_ids(backend)
    if multilingual is None:
        multilingual = special.eot > 50256
    return Tokenizer(
        backend=backend,
        special=special,
        suppress_tokens=tuple(int(i) for i in suppress_tokens),
        begin_suppress_tokens=tuple(int(i) for i in begin_suppress_tokens),
        multilingual=multilingual,
    )


def _backend(model_dir: pathlib.Path) -> tokenizers.Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing (CTranslate2 and Hugging Face Whisper folders ship one; for an HF "
            "folder with vocab.json only, save `WhisperTokenizerFast.from_pretrained(...)` there)"
        )
    backend = tokenizers.Tokenizer.from_file(str(path))
    backend.encode_special_tokens = True  # "<|endoftext|>" typed in a transcript stays text
    return backend


def _ids(cfg: Mapping[str, Any], key: str, path: pathlib.Path) -> tuple[int, ...]:
    """Token ids under `key` (absent or null: none), or ValueError naming the file and key."""
    value = cfg.get(key) or ()
    if not isinstance(value, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise ValueError(f"{path}: {key!r} must be a list of token ids, got {value!r:.80}")
    return tuple(value)


def load(model_dir: str | os.PathLike, *, multilingual: bool | None = None) -> Tokenizer:
    """Tokenizer of a CTranslate2 folder (`tokenizer.json` + `config.json` with `suppress_ids`,
    `suppress_ids_begin`) or an HF folder (`generation_config.json` with `suppress_tokens`,
    `begin_suppress_tokens`)."""
    model_dir = pathlib.Path(model_dir)
    suppress: Any = ()
    begin: Any = ()
    ct2_config, hf_generation = model_dir / "config.json", model_dir / "generation_config.json"
    if hf_generation.is_file():
        cfg = jsonio.read_object(hf_generation, what="the model's generation config")
        keys = ("suppress_tokens", "begin_suppress_tokens")
        suppress, begin = (_ids(cfg, k, hf_generation) for k in keys)
    elif ct2_config.is_file():
        cfg = jsonio.read_object(ct2_config, what="the model's CTranslate2 config")
        suppress, begin = (_ids(cfg, k, ct2_config) for k in ("suppress_ids", "suppress_ids_begin"))
    return from_backend(
        _backend(model_dir),
        suppress_tokens=suppress,
        begin_suppress_tokens=begin,
        multilingual=multilingual,
    )
