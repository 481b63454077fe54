"""Hugging Face datasets built in memory with audio bytes (nothing downloads)."""

import io

import datasets
import numpy as np
import pytest
import soundfile

from pqm_jax.data import hf, issues


def _flac(samples, rate=16000):
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="FLAC")
    return buf.getvalue()


def _dataset(tone, *, extra=()):
    rows = [
        {
            "id": f"{s}-1-{i}",
            "speaker_id": s,
            "text": f"WORDS {i}",
            "audio": {"bytes": _flac(tone(0.25 * (i + 1))), "path": None},
        }
        for s in (10, 20)
        for i in range(3)
    ]
    rows += list(extra)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
            "text": datasets.Value("string"),
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        }
    )
    # As a parquet dataset stores it: a {bytes, path} struct typed as Audio (casting the
    # storage encodes nothing, so torchcodec is never needed).
    ds = datasets.Dataset.from_list(rows, features=features)
    return ds.cast_column("audio", datasets.Audio(sampling_rate=16000))


def test_reads_librispeech_like_dataset(tone):
    ds = _dataset(tone)
    entries = hf.list_entries(ds)
    assert [e.speaker for e in entries] == ["10"] * 3 + ["20"] * 3
    utts = list(hf.read(ds))
    assert [u.utt_id for u in utts] == [e.utt_id for e in entries]
    assert utts[2].audio.shape == (12000,) and utts[2].audio.dtype == np.float32
    assert utts[2].text == "WORDS 2" and utts[2].speaker == "10"


def test_reads_only_given_speakers_or_entries(tone):
    ds = _dataset(tone)
    assert {u.speaker for u in hf.read(ds, speakers={"20"})} == {"20"}
    entries = hf.list_entries(ds)[4:5]
    assert [u.utt_id for u in hf.read(ds, entries=entries)] == ["20-1-1"]


def test_custom_columns_and_row_ids(tone):
    ds = datasets.Dataset.from_dict(
        {
            "wav": [{"bytes": _flac(tone(0.5, rate=8000), 8000), "path": None}],
            "sentence": ["hi"],
            "client": ["c1"],
        }
    )  # a plain struct column, not typed as Audio: read the same way
    cols = hf.Columns(audio="wav", text="sentence", speaker="client", utt_id=None)
    with pytest.warns(issues.InputWarning, match=r"unexpected sample rate: hf://.*/0.*8000 Hz"):
        (u,) = hf.read(ds, columns=cols)
    assert u.utt_id == "0" and u.audio.shape == (8000,)


def test_bad_rows_reported(tone):
    extra = [
        {
            "id": "30-1-0",
            "speaker_id": 30,
            "text": "BROKEN",
            "audio": {"bytes": b"not audio at all", "path": None},
        },
        {
            "id": "30-1-1",
            "speaker_id": 30,
            "text": "",
            "audio": {"bytes": _flac(tone(0.1)), "path": None},
        },
    ]
    report = issues.InputReport()
    with pytest.warns(issues.InputWarning) as caught:
        utts = list(hf.read(_dataset(tone, extra=extra), report=report))
    assert len(utts) == 6
    messages = " | ".join(str(w.message) for w in caught)
    assert "corrupt audio: hf://" in messages and "empty transcript" in messages
    assert report.count() == 2


def test_parquet_dataset_from_disk(tmp_path, tone):
    """The LibriSpeech parquet route: Audio typed from the file's metadata, decoded here."""
    _dataset(tone).to_parquet(str(tmp_path / "part-0.parquet"))
    ds = datasets.Dataset.from_parquet(
        str(tmp_path / "part-0.parquet"), cache_dir=str(tmp_path / "c")
    )
    assert isinstance(ds.features["audio"], datasets.Audio)
    utts = list(hf.read(ds, speakers={"10"}))
    assert [u.audio.shape for u in utts] == [(4000,), (8000,), (12000,)]
