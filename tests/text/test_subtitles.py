"""SRT / VTT / txt / JSON writers."""

import json

import pytest

from pqm_jax.models.whisper import longform
from pqm_jax.text import subtitles

SEGS = [
    longform.Segment(start=0.0, end=2.5, tokens=(1, 2), text=" Hello there."),
    longform.Segment(start=2.5, end=3725.4996, tokens=(3,), text="General Kenobi."),
    longform.Segment(start=3726.0, end=3727.0, tokens=(), text="  "),
]


def test_timestamps_round_to_milliseconds():
    assert subtitles.timestamp(3725.4996) == "01:02:05,500"
    assert subtitles.timestamp(0.0004, marker=".", hours=False) == "00:00.000"
    assert subtitles.timestamp(-1.0) == "00:00:00,000"


def test_srt_numbers_cues_and_skips_empty_ones():
    assert subtitles.srt(SEGS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
        "2\n00:00:02,500 --> 01:02:05,500\nGeneral Kenobi.\n"
    )


def test_vtt_has_its_header_and_dotted_times():
    assert subtitles.vtt(SEGS) == (
        "WEBVTT\n\n00:00.000 --> 00:02.500\nHello there.\n\n"
        "00:02.500 --> 01:02:05.500\nGeneral Kenobi.\n"
    )


def test_txt_and_json():
    assert subtitles.render("txt", SEGS, text="x") == "Hello there.\nGeneral Kenobi.\n"
    assert subtitles.render("txt", [], text="plain") == "plain\n"
    record = json.loads(subtitles.render("json", SEGS, text="t", extra={"audio": "a.wav"}))
    assert record["text"] == "t" and record["audio"] == "a.wav"
    assert record["segments"][1] == {
        "id": 1, "start": 2.5, "end": 3725.4996, "text": "General Kenobi.", "tokens": [3],
        "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="not one of"):
        subtitles.render("docx", SEGS, text="")
