"""InputReport: every problem is warned about and counted, or raised in strict mode."""

import warnings

import pytest

import pqm_jax
from pqm_jax.data import issues


def test_warns_counts_and_summarises():
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning, match=r"empty transcript: a\.flac; skipped"):
        report.issue(issues.Kind.EMPTY_TRANSCRIPT, issues.Action.SKIPPED, "a.flac")
    with pytest.warns(issues.InputWarning, match="resampled"):
        report.issue(issues.Kind.SAMPLE_RATE, issues.Action.RESAMPLED, "b.wav", "8000 Hz")
    assert report.count() == 2
    assert report.count(issues.Kind.SAMPLE_RATE) == 1
    summary = report.summary()
    assert "2 input problems" in summary
    assert "empty transcript: skipped" in summary
    assert report.issues[1].source == "b.wav"


def test_warning_is_a_pqm_warning():
    assert issubclass(issues.InputWarning, pqm_jax.PQMWarning)


def test_strict_raises_and_names_the_file():
    report = issues.InputReport(strict=True)
    with pytest.raises(issues.InputError, match=r"corrupt audio: x\.wav"):
        report.issue(issues.Kind.CORRUPT_AUDIO, issues.Action.SKIPPED, "x.wav")


def test_warnings_capped_but_counts_exact():
    report = issues.InputReport(max_warnings_per_kind=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            report.issue(issues.Kind.EMPTY_AUDIO, issues.Action.SKIPPED, f"{i}.wav")
    assert len(caught) == 3  # two named ones + "further ones are only counted"
    assert "only counted" in str(caught[-1].message)
    assert report.count() == 5


def test_clean_report_summary():
    assert issues.InputReport().summary() == "no input problems"
