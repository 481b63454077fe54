"""Transcript text: digit words, ASCII clean-up, a seeded sentence source, transcript files."""

from __future__ import annotations

import os
import unicodedata

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Common typographic characters with an obvious ASCII form (NFKD does not map these).
_ASCII_MAP = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00a0": " ",
        "\u00df": "ss",
        "\u00e6": "ae",
        "\u00c6": "AE",
        "\u0153": "oe",
        "\u0152": "OE",
        "\u00f8": "o",
        "\u00d8": "O",
    }
)


def digits_to_words(digits: str | list[int]) -> str:
    """'7031' or [7, 0, 3, 1] -> 'seven zero three one'."""
    return " ".join(DIGIT_WORDS[int(d)] for d in digits)


def to_ascii(text: str) -> str:
    """Transliterates `text` to ASCII: accents stripped, typographic marks mapped, rest dropped."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_MAP))
    return "".join(c for c in decomposed if ord(c) < 128)


def read_transcript_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Reads a LibriSpeech-style transcript file: lines `UTT-ID TEXT` -> [(utt_id, text)].

    Blank lines are ignored; a line with an id and no text gives an empty text (the caller
    reports it). Invalid UTF-8 is decoded as U+FFFD, which the caller reports as non-ASCII.
    """
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                utt_id, _, words = line.partition(" ")
                rows.append((utt_id, words.strip()))
    return rows


def select_sentences(
    texts: list[str], *, min_words: int = 6, max_words: int = 30, lowercase: bool = True
) -> list[str]:
    """Keeps ASCII texts with `min_words..max_words` words (in order), deduplicated."""
    seen: set[str] = set()
    out = []
    for t in texts:
        t = " ".join(t.split())
        t = t.lower() if lowercase else t
        if t.isascii() and min_words <= len(t.split()) <= max_words and t not in seen:
            seen.add(t)
            out.append(t)
    return out


# A small grammar owned by the project: enough lexical variety for synthetic speakers without
# any external text. Sentences look like "the old farmer quietly carried seven heavy boxes".
_DET = ("the", "a", "every", "one", "that", "this", "some")
_ADJ = (
    "old young quiet busy small large bright dark heavy gentle clever tired happy careful "
    "distant narrow wooden golden silver broken famous simple curious patient"
).split()
_NOUN = (
    "farmer teacher doctor sailor river garden window letter engine village kitchen market "
    "student captain painter station bridge forest mountain harbour library basket candle "
    "machine orchard neighbour traveller blanket lantern"
).split()
_VERB = (
    "carried found painted opened watched repaired noticed followed described borrowed "
    "cleaned visited remembered counted delivered measured collected explained"
).split()
_ADV = "quietly slowly quickly carefully suddenly finally rarely gladly often nearly".split()
_PREP = "near behind across beside under over through beyond along".split()
_TIME = (
    "in the morning",
    "after dinner",
    "before the storm",
    "on monday",
    "last winter",
    "at noon",
    "every evening",
    "during the summer",
)
_NUM = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")


def _noun_phrase(rng: np.random.Generator) -> list[str]:
    words = [str(rng.choice(_DET))]
    if rng.random() < 0.6:
        words.append(str(rng.choice(_ADJ)))
    words.append(str(rng.choice(_NOUN)))
    return words


def generate_sentences(n: int, *, seed: int, min_words: int = 6, max_words: int = 30) -> list[str]:
    """`n` distinct lower-case sentences from the project's grammar, deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct sentences")
        words = _noun_phrase(rng)
        if rng.random() < 0.5:
            words.append(str(rng.choice(_ADV)))
        words.append(str(rng.choice(_VERB)))
        if rng.random() < 0.4:
            words += [str(rng.choice(_NUM)), str(rng.choice(_ADJ)), str(rng.choice(_NOUN)) + "s"]
        else:
            words += _noun_phrase(rng)
        while len(words) < max_words and rng.random() < 0.55:
            words += [str(rng.choice(_PREP)), *_noun_phrase(rng)]
        if rng.random() < 0.5:
            words += str(rng.choice(_TIME)).split()
        sentence = " ".join(words[:max_words])
        if len(sentence.split()) >= min_words and sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out
