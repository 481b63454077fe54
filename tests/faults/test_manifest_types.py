"""Manifest rows whose transcript (or path) is not a string are named and skipped, not scored."""

import json

import pytest

from pqm_jax.data import issues, manifest


@pytest.mark.parametrize("text", [12345, ["one"], {"t": "x"}, True])
def test_a_non_string_transcript_is_skipped_and_named(tmp_path, tone, write_audio, text):
    write_audio(tmp_path / "a.wav", tone(0.2))
    write_audio(tmp_path / "b.wav", tone(0.2))
    rows = [
        {"path": "a.wav", "text": "fine", "speaker": "s"},
        {"path": "b.wav", "text": text, "speaker": "s"},
        {"path": 3, "text": "a path that is a number", "speaker": "s"},
    ]
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        entries = manifest.list_entries(path, report=report)
    assert [e.text for e in entries] == ["fine"]
    messages = [str(w.message) for w in caught]
    assert any("manifest.jsonl:2" in m and "text=" in m and "not a string" in m for m in messages)
    assert any("manifest.jsonl:3" in m and "path=3" in m for m in messages)
    assert report.count(issues.Kind.BAD_RECORD) == 2
