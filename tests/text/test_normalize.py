"""Scoring normalisers: Whisper's English normaliser (with its spelling map) and the FSDD digit form."""

from __future__ import annotations

import json

import pytest

from pqm_jax import resources
from pqm_jax.text import normalize as text


@pytest.fixture(scope="module")
def spelling_json():
    try:
        return resources.whisper_english_json()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("The Organisation's centre [inaudible] (laughs) costs $5.50.",
         "the organization is center costs $5.50"),
        ("Mr. Smith's colour is 10% and he's got twenty-one apples, um, at 3:30pm!",
         "mister smith is color is 10% and he has got 21 apples at 3 30 pm"),
        ("I won't go, hmm, it's the 1st of May", "i will not go it is the 1st of may"),
        ("one two three four", "1234"),
        ("Ça va très bien", "ca va tres bien"),
    ],
)  # fmt: skip
def test_normalize_english(spelling_json, raw, want):
    assert text.normalize_english(raw) == want


def test_spelling_map_is_whispers(spelling_json):
    mapping = json.loads(spelling_json.read_text())
    assert mapping["colour"] == "color" and len(mapping) > 1500


def test_env_override(tmp_path, monkeypatch):
    custom = tmp_path / "spelling.json"
    custom.write_text(json.dumps({"kolour": "colour"}))
    monkeypatch.setenv(resources.ENGLISH_JSON_ENV, str(custom))
    assert resources.whisper_english_json() == custom
    assert text.english_normalizer(resources.whisper_english_json())("Kolour!") == "colour"
    monkeypatch.setenv(resources.ENGLISH_JSON_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="PQM_WHISPER_ENGLISH_JSON points to"):
        resources.whisper_english_json()


def test_missing_spelling_map_names_the_fix(monkeypatch):
    monkeypatch.delenv(resources.ENGLISH_JSON_ENV, raising=False)

    def absent(name):
        raise resources.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(resources.importlib.metadata, "distribution", absent)
    monkeypatch.setattr(resources, "_package_dir", lambda module: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps openai-whisper==20250625"):
        resources.whisper_english_json()


def test_normalize_basic():
    assert text.normalize_basic("Ça va? [music] (laughs) Très-bien!").split() == [
        "ça", "va", "très", "bien",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("seven zero three one", "seven zero three one"),
        ("7031", "seven zero three one"),
        ("7,031.", "seven zero three one"),
        ("Seven-three, 1, 8.", "seven three one eight"),
        ("to 584.", "to five eight four"),
        ("6, 172.", "six one seven two"),
        ("It's 4 o'clock", "its four oclock"),
        ("  NINE\tnine  ", "nine nine"),
        ("", ""),
    ],
)
def test_normalize_digits(raw, want):
    assert text.normalize_digits(raw) == want
