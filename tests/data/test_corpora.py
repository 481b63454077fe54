"""Transcript checks done while reading a corpus (`corpora.clean_transcript`)."""

import pytest

from pqm_jax.data import corpora, issues


def test_clean_transcript_ascii_passes_silently():
    assert corpora.clean_transcript("  HELLO   world ", name="x") == "HELLO world"


def test_empty_transcript_skipped():
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match="empty transcript: utt1; skipped"):
        assert corpora.clean_transcript("   ", name="utt1", report=report) is None
    assert report.count(issues.Kind.EMPTY_TRANSCRIPT) == 1


@pytest.mark.parametrize(
    ("policy", "expected", "action"),
    [
        ("transliterate", "cafe au lait", "transliterated"),
        ("keep", "café au lait", "kept"),
        ("skip", None, "skipped"),
    ],
)
def test_non_ascii_policies(policy, expected, action):
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match=f"non-ASCII transcript: u7.*{action}"):
        out = corpora.clean_transcript("café au lait", name="u7", non_ascii=policy, report=report)
    assert out == expected
    assert report.count(issues.Kind.NON_ASCII) == 1


def test_non_ascii_nothing_left_is_skipped():
    with pytest.warns(issues.InputWarning, match="nothing left"):
        assert corpora.clean_transcript("日本語", name="u") is None


def test_strict_mode_raises():
    with pytest.raises(issues.InputError):
        corpora.clean_transcript("", name="u", report=issues.InputReport(strict=True))
