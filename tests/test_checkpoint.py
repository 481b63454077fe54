"""Checkpoints: bit-exact round trips, atomic commits, torn files detected and skipped."""

import jax
import numpy as np
import pytest

from pqm_jax import checkpoint
from pqm_jax.quant import base as qbase
from pqm_jax.testing import toy

CONFIG = toy.tiny_config(d_model=32, vocab_size=64, positions=8)


@pytest.fixture(scope="module")
def trees():
    # Only the MLP kernels (one shape): quantising compiles once per shape.
    base = toy.quantized_model(CONFIG, key=jax.random.key(0), targets=(r"fc\d/kernel$",))
    return base, toy.adapters(base, key=jax.random.key(1))


def _lora_files(path, item="lora"):
    return sorted(p for p in (path / item).rglob("*") if p.is_file() and p.stat().st_size > 100)


def test_round_trip_is_bit_exact(tmp_path, trees):
    base, lora = trees
    checkpoint.save(tmp_path / "c", {"base": base, "lora": lora, "meta": checkpoint.Json({"a": 1})})
    out = checkpoint.restore(
        tmp_path / "c",
        {"base": jax.eval_shape(lambda: base), "lora": lora, "meta": checkpoint.Json()},
    )
    assert out["meta"] == {"a": 1}
    q = out["base"]["decoder"]["layers_0"]["fc1"]["kernel"]
    assert qbase.is_quantized(q) and q.inner.block_size == 64
    for a, b in zip(jax.tree.leaves(out["base"]), jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert toy.tree_max_diff(out["lora"], lora) == 0.0
    with pytest.raises(FileExistsError):
        checkpoint.save(tmp_path / "c", {"lora": lora})


def test_torn_checkpoint_is_skipped_with_a_warning(tmp_path, trees):
    _, lora = trees
    series = checkpoint.Series(tmp_path / "s", keep=3)
    for step in (10, 20, 30):
        moved = jax.tree.map(lambda x, s=step: x + s, lora)
        series.save(step, {"lora": moved, "pos": checkpoint.Json({"step": step})})
    # A killed save leaves only a hidden partial folder: never listed.
    (tmp_path / "s" / ".step_00000040.partial").mkdir()
    assert series.steps() == [10, 20, 30]
    victim = _lora_files(series.path(30))[0]
    victim.write_bytes(victim.read_bytes()[:-5])  # truncated
    gone = _lora_files(series.path(20))[0]
    gone.unlink()  # deleted
    targets = {"lora": lora, "pos": checkpoint.Json()}
    with pytest.warns(checkpoint.CheckpointWarning) as record:
        step, out = series.restore_latest(targets)
    messages = [str(w.message) for w in record]
    assert step == 10 and out["pos"] == {"step": 10}
    assert any(victim.name in m and "bytes" in m for m in messages)
    assert any(gone.name in m and "missing" in m for m in messages)
    assert toy.tree_max_diff(out["lora"], jax.tree.map(lambda x: x + 10, lora)) == 0.0


def test_missing_integrity_record_means_torn(tmp_path, trees):
    _, lora = trees
    series = checkpoint.Series(tmp_path / "s")
    series.save(1, {"lora": lora})
    series.save(2, {"lora": lora})
    (series.path(2) / checkpoint.INTEGRITY).unlink()
    with pytest.warns(checkpoint.CheckpointWarning, match=checkpoint.INTEGRITY):
        step, _ = series.restore_latest({"lora": lora})
    assert step == 1
    series.save(3, {"lora": lora})
    assert series.steps() == [2, 3]  # pruned to keep=2


def test_one_item_restores_without_the_others(tmp_path, trees):
    _, lora = trees
    items = {f"s{i}": jax.tree.map(lambda x, i=i: x * i, lora) for i in range(3)}
    path = checkpoint.save(tmp_path / "bank", items)
    for f in _lora_files(path, "s0"):
        f.write_bytes(b"garbage")  # another speaker's files: never read
    out = checkpoint.restore(path, {"s2": lora})
    assert toy.tree_max_diff(out["s2"], items["s2"]) == 0.0
    with pytest.raises(checkpoint.CorruptCheckpointError, match="s0"):
        checkpoint.restore(path, {"s0": lora})
    with pytest.raises(KeyError, match="no item"):
        checkpoint.restore(path, {"s9": lora})


def test_a_relative_path_saves_and_restores(tmp_path, trees, monkeypatch):
    # `train.py --workdir runs/x` hands relative paths down; orbax alone refuses them.
    _, lora = trees
    monkeypatch.chdir(tmp_path)
    series = checkpoint.Series("runs/x/ckpt")
    series.save(100, {"lora": lora, "best": lora})
    step, out = series.restore_latest({"lora": lora, "best": lora})
    assert step == 100 and toy.tree_max_diff(out["best"], lora) == 0.0
    assert (tmp_path / "runs/x/ckpt/step_00000100").is_dir()
