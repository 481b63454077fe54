"""Transcript helpers: digit words, ASCII clean-up, sentence sources."""

from pqm_jax.text import transcripts as text


def test_digits_to_words():
    assert text.digits_to_words("7031") == "seven zero three one"
    assert text.digits_to_words([9, 2]) == "nine two"


def test_to_ascii():
    assert text.to_ascii("café naïve “quoted” – Straße") == 'cafe naive "quoted" - Strasse'


def test_generate_sentences_deterministic_and_bounded():
    a = text.generate_sentences(300, seed=3, min_words=6, max_words=30)
    assert a == text.generate_sentences(300, seed=3, min_words=6, max_words=30)
    assert a != text.generate_sentences(300, seed=4, min_words=6, max_words=30)
    assert len(set(a)) == 300
    assert all(6 <= len(s.split()) <= 30 and s.isascii() and s == s.lower() for s in a)


def test_transcript_file_and_selection(tmp_path):
    path = tmp_path / "t.trans.txt"
    path.write_text("1-2-0000 ONE TWO THREE FOUR FIVE SIX\n\n1-2-0001 SHORT\n1-2-0002\n")
    rows = text.read_transcript_file(path)
    assert rows == [
        ("1-2-0000", "ONE TWO THREE FOUR FIVE SIX"),
        ("1-2-0001", "SHORT"),
        ("1-2-0002", ""),
    ]
    assert text.select_sentences([t for _, t in rows]) == ["one two three four five six"]


def test_dev_clean_sentences(dev_clean_text):
    rows = text.read_transcript_file(dev_clean_text)
    assert len(rows) == 2703
    picked = text.select_sentences([t for _, t in rows], min_words=6, max_words=30)
    assert len(picked) > 1500
