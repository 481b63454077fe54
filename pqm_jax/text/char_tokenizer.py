"""Inputs of the Conformer AED: a character vocabulary built from training text, and SpecAugment.

The vocabulary follows ESPnet's `token_list` convention: `<blank>` = 0 (CTC blank), `<unk>` = 1,
the characters (a space is `<space>`), and `<sos/eos>` last (= `ConformerConfig.sos`/`eos`), so a
token list written by `save` reads like an ESPnet `tokens.txt`.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable

BLANK, UNK, SOS_EOS, SPACE = "<blank>", "<unk>", "<sos/eos>", "<space>"


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """Character vocabulary; `tokens[i]` is the text of id i."""

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, texts: Iterable[str], *, min_count: int = 1) -> CharVocab:
        """Every character seen at least `min_count` times in `texts`, sorted (stable ids)."""
        counts = collections.Counter(ch for text in texts for ch in text)
        chars = sorted(SPACE if ch == " " else ch for ch, n in counts.items() if n >= min_count)
        return cls((BLANK, UNK, *chars, SOS_EOS))

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def eos(self) -> int:
        return len(self.tokens) - 1

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text` (unknown characters -> `<unk>`)."""
        index = {t: i for i, t in enumerate(self.tokens)}
        return [index.get(SPACE if ch == " " else ch, 1) for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, stopping at `<sos/eos>` and skipping blanks."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i == 0:
                continue
            tok = self.tokens[i]
            out.append(" " if tok == SPACE else tok)
        return "".join(out)

    def save(self, path: str | os.PathLike) -> None:
        """One token a line (ESPnet `tokens.txt`)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.tokens) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharVocab:
        with open(path, encoding="utf-8") as f:
            tokens = tuple(line.rstrip("\n") for line in f if line.strip())
        if tokens[:2] != (BLANK, UNK) or tokens[-1] != SOS_EOS:
            raise ValueError(f"{path}: not a token list with <blank>, <unk> first, <sos/eos> last")
        return cls(tokens)


@dataclasses.dataclass(frozen=True)
class _Special:
    eot: int


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """A `CharVocab` behind the tokenizer interface the training and evaluation code uses
    (`pqm_jax.text.whisper_tokenizer.Tokenizer`'s `prompt`, `special.eot`, `encode`, `decode`): the prompt is
    `<sos/eos>` alone, end-of-text is `<sos/eos>` too, and text is lower-cased."""

    vocab: CharVocab
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()

    @property
    def special(self) -> _Special:
        return _Special(eot=self.vocab.eos)

    def prompt(self) -> tuple[int, ...]:
        return (self.vocab.eos,)

    def encode(self, text: str, *, leading_space: bool = False) -> list[int]:
        del leading_space  # characters: no word-boundary marker
        return self.vocab.encode(normalize(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self.vocab.decode(ids)


def normalize(text: str) -> str:
    """What the character models read and write: lower case, single spaces."""
    return " ".join(text.lower().split())
