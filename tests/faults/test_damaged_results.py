"""Finished results damaged on disk are found on the next run and redone, nothing more."""

import pathlib
import shutil

import jax
import numpy as np
import pytest

from pqm_jax import checkpoint
from pqm_jax.run import bank, pipeline, results, workdir
from pqm_jax.run import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny():
    return config_lib.from_dict(config_lib.load_file(ROOT / "configs" / "tiny_test.py"))


@pytest.fixture(scope="module")
def finished(tiny_run):
    res = results.load(tiny_run)
    return tiny_run, {s: res.speaker_lora(s) for s in res.speakers()}, res.si_lora()


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _copy(finished, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(finished[0], wd)
    return wd, workdir.Workdir(wd)


def test_a_deleted_bank_file_redoes_its_chunk(finished, tmp_path):
    wd, paths = _copy(finished, tmp_path)
    (paths.chunk(0) / workdir.CHUNK_ARRAYS).unlink()
    with pytest.warns(checkpoint.CheckpointWarning, match=r"redoing chunk 0: .* is missing"):
        pipeline.run_pipeline(_tiny(), wd, progress=False)
    res = results.load(wd)
    for s, lora in finished[1].items():
        _same(res.speaker_lora(s), lora)  # the redone chunk trains to the same adapters


def test_damaged_chunk_results_are_redone_not_a_file_exists_error(finished, tmp_path):
    wd, paths = _copy(finished, tmp_path)
    (paths.chunk(1) / workdir.CHUNK_RECORD).write_bytes(b"garbage")
    with pytest.warns(checkpoint.CheckpointWarning, match="redoing chunk 1: .* is damaged"):
        pipeline.run_pipeline(_tiny(), wd, progress=False)
    assert bank.is_valid(paths, 1)
    res = results.load(wd)
    for s, lora in finished[1].items():
        _same(res.speaker_lora(s), lora)


def test_altered_adapters_are_found_by_their_checksum(finished, tmp_path):
    wd, paths = _copy(finished, tmp_path)
    arrays = paths.chunk(0) / workdir.CHUNK_ARRAYS
    data = bytearray(arrays.read_bytes())
    data[-3] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.warns(checkpoint.CheckpointWarning, match="redoing chunk 0: .* checksum"):
        pipeline.run_pipeline(_tiny(), wd, progress=False)
    res = results.load(wd)
    for s, lora in finished[1].items():
        _same(res.speaker_lora(s), lora)


def test_a_damaged_stage2_result_is_trained_again(finished, tmp_path):
    wd, paths = _copy(finished, tmp_path)
    f = next(p for p in sorted(paths.stage2_final.rglob("*")) if p.is_file() and p.stat().st_size)
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.warns(checkpoint.CheckpointWarning, match="training stage 2 again"):
        pipeline.run_pipeline(_tiny(), wd, progress=False)
    _same(results.load(wd).si_lora(), finished[2])
