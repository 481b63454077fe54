"""The Whisper tokenizer on the real English-only (tiny.en) and multilingual (base) vocabularies."""

from __future__ import annotations

import json
import shutil

import pytest

from pqm_jax import resources
from pqm_jax.text import whisper_tokenizer as text


def _load(locate):
    try:
        return text.load(locate())
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def english():
    return _load(resources.tiny_en_dir)


@pytest.fixture(scope="module")
def multilingual():
    return _load(resources.base_dir)


def test_english_only_special_ids(english):
    s = english.special
    assert (s.eot, s.sot, s.translate, s.transcribe) == (50256, 50257, 50357, 50358)
    assert (s.sot_lm, s.sot_prev, s.no_speech, s.no_timestamps) == (50359, 50360, 50361, 50362)
    assert s.timestamp_begin == 50363
    assert s.languages["en"] == 50258 and s.languages["su"] == 50356
    assert len(english.languages()) == 99 and english.languages()[:2] == ["en", "zh"]
    assert not english.multilingual
    assert english.begin_suppress_tokens == (220, 50256)
    assert len(english.suppress_tokens) == 90 and 50362 not in english.suppress_tokens


def test_multilingual_special_ids(multilingual):
    s = multilingual.special
    assert (s.eot, s.sot, s.no_timestamps) == (50257, 50258, 50363)
    assert s.languages["en"] == 50259 and s.languages["fr"] == 50265
    assert multilingual.multilingual
    assert multilingual.begin_suppress_tokens == (220, 50257)


def test_prompts(english, multilingual):
    assert english.prompt() == [50257, 50362]
    assert english.prompt(timestamps=True) == [50257]
    assert english.prompt(language=None) == [50257, 50362]
    assert multilingual.prompt() == [50258, 50259, 50359, 50363]
    assert multilingual.prompt("fr", "translate", timestamps=True) == [50258, 50265, 50358]
    with pytest.raises(ValueError, match="English-only"):
        english.prompt("fr")
    with pytest.raises(ValueError, match="English-only"):
        english.prompt(task="translate")
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        multilingual.prompt("xx")
    with pytest.raises(ValueError, match="needs a language"):
        multilingual.prompt(None)
    with pytest.raises(ValueError, match="task must be"):
        multilingual.prompt("en", "summarise")


def test_encode_decode(english, multilingual):
    for tok in (english, multilingual):
        ids = tok.encode("seven three", leading_space=True)
        assert all(i < tok.special.eot for i in ids)
        assert ids == tok.encode(" seven three")
        assert tok.decode(ids) == "seven three"
        noisy = [*tok.prompt(), *ids, tok.special.timestamp_begin + 5, tok.special.eot]
        assert tok.decode(noisy) == "seven three"
        assert tok.decode(tok.encode("Hello, world! Ça va?")) == "Hello, world! Ça va?"
    assert english.encode(" seven") == [3598]  # what tiny.en emits for FSDD's "7"
    literal = english.encode("<|endoftext|>")  # special tokens typed as text stay text
    assert len(literal) > 1 and english.decode(literal) == "<|endoftext|>"


def test_hf_folder_uses_generation_config(tmp_path):
    try:
        source = resources.tiny_en_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    shutil.copy(source / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    generation = {"suppress_tokens": [1, 2], "begin_suppress_tokens": [220, 50256]}
    (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    tok = text.load(tmp_path)
    assert tok.suppress_tokens == (1, 2) and tok.begin_suppress_tokens == (220, 50256)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(source / "tokenizer.json", bare / "tokenizer.json")
    assert text.load(bare).suppress_tokens == ()
    assert text.load(bare, multilingual=True).multilingual
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json is missing"):
        text.load(tmp_path / "nowhere")
