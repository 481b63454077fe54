"""The on-disk bank: chunks of stacked rows, an appended manifest, and paged reads for decoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import decoding
from pqm_jax.run import bank
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.testing import toy

SPEAKERS = 10_000
CHUNK = 2_500


@pytest.fixture(scope="module")
def model():
    cfg = toy.tiny_config()
    base = toy.quantized_model(cfg, key=jax.random.key(0))
    lc = lora_lib.LoraConfig(rank=1, alpha=4.0, targets=toy.whisper_family.LORA_TARGETS)
    template = jax.eval_shape(lambda: lora_lib.init(base, lc, key=jax.random.key(1)))
    return cfg, base, template


def _random_rows(template, n, seed):
    width = sum(int(np.prod(leaf["shape"])) for leaf in bank.layout(template))
    return np.random.default_rng(seed).normal(0.0, 0.3, (n, width)).astype(np.float32)


@pytest.fixture(scope="module")
def ten_thousand(model, tmp_path_factory):
    """10,000 speakers' adapters written as 4 chunks, and the same rows in memory."""
    _, _, template = model
    paths = workdir_lib.Workdir(tmp_path_factory.mktemp("bank"))
    bank.write_lines(paths, [{"header": True, "format": bank.FORMAT, "slots": CHUNK}])
    names = [f"spk{i:05d}" for i in range(SPEAKERS)]
    rows = _random_rows(template, SPEAKERS, seed=0)
    for c in range(SPEAKERS // CHUNK):
        part = slice(c * CHUNK, (c + 1) * CHUNK)
        results = [{"speaker": s} for s in names[part]]
        bank.write_chunk(paths, c, rows[part], names[part], results, template)
        bank.append_line(paths, {"chunk": c, "speakers": results})
    bank.append_line(paths, {"complete": True})
    return paths, names, rows


def test_rows_round_trip_through_the_tree_layout(model):
    _, _, template = model
    rows = _random_rows(template, 3, seed=1)
    tree = bank.unflatten(rows, template)
    assert jax.tree.structure(tree) == jax.tree.structure(template)
    np.testing.assert_array_equal(bank.flatten(tree, 3), rows)
    np.testing.assert_array_equal(bank.flatten(tree, 2), rows[:2])


def test_ten_thousand_speakers_are_four_chunk_files_and_a_five_line_manifest(ten_thousand):
    paths, _, _ = ten_thousand
    files = sorted(p.name for p in paths.bank.rglob("*") if p.is_file())
    assert files == sorted([workdir_lib.CHUNK_ARRAYS, workdir_lib.CHUNK_RECORD] * 4)
    assert len(paths.manifest.read_text().splitlines()) == 1 + 4 + 1
    m = bank.manifest(bank.read_lines(paths))
    assert m["complete"] and len(m["speakers"]) == SPEAKERS
    assert m["speakers"]["spk07501"] == {"speaker": "spk07501", "chunk": 3, "row": 1}


def test_paged_rows_equal_the_in_memory_bank_and_the_cache_stays_bounded(ten_thousand, model):
    paths, names, rows = ten_thousand
    _, _, template = model
    paged = bank.PagedBank(paths, template, cache_speakers=16)
    rng = np.random.default_rng(2)
    for _ in range(20):
        pick = rng.integers(0, SPEAKERS, 8)
        got = bank.flatten(paged.gather([names[i] for i in pick]), 8)
        np.testing.assert_array_equal(got, rows[pick])
        assert len(paged._cache) <= 16
    before = paged.reads
    paged.gather([names[pick[0]]] * 5)  # just used: served from the cache
    assert paged.reads == before
    with pytest.raises(KeyError, match="'nobody' not adapted"):
        paged.gather(["nobody"])


def test_mixed_batches_decode_equal_to_the_full_in_memory_bank(ten_thousand, model):
    paths, names, rows = ten_thousand
    cfg, base, template = model
    paged = bank.PagedBank(paths, template, cache_speakers=8)
    rng = np.random.default_rng(3)
    keep = rng.choice(SPEAKERS, 64, replace=False)  # the "full" bank, in memory
    full = bank.StackedBank(bank.unflatten(rows[keep], template), [names[i] for i in keep])
    opts = decoding.DecodeOptions(prompt=(1, 2), eot=3, max_new_tokens=6)
    differs = []
    for b in range(3):
        batch = toy.random_batch(cfg, (8,), seed=b)
        who = [names[i] for i in rng.choice(keep, 8)]
        out = {}
        for name, source in (("paged", paged), ("full", full)):
            lora = jax.tree.map(jax.numpy.asarray, source.gather(who))
            res = decoding.generate(base, batch["mel"], config=cfg, options=opts, lora=lora)
            out[name] = np.asarray(res.tokens)
        np.testing.assert_array_equal(out["paged"], out["full"])
        other = jax.tree.map(jax.numpy.asarray, full.gather(who[::-1]))
        res = decoding.generate(base, batch["mel"], config=cfg, options=opts, lora=other)
        differs.append(not np.array_equal(np.asarray(res.tokens), out["full"]))
    assert any(differs)  # the adapters matter: the equality above is not vacuous
    assert len(paged._cache) <= 8


def test_a_torn_manifest_line_is_dropped_and_a_later_chunk_line_wins(tmp_path):
    paths = workdir_lib.Workdir(tmp_path)
    bank.write_lines(paths, [{"header": True, "slots": 2}])
    bank.append_line(paths, {"chunk": 0, "speakers": [{"speaker": "a", "x": 1}]})
    bank.append_line(paths, {"chunk": 0, "speakers": [{"speaker": "a", "x": 2}]})
    with open(paths.manifest, "a") as f:
        f.write('{"chunk": 1, "speak')
    lines = bank.read_lines(paths)
    assert len(lines) == 3
    m = bank.manifest(lines)
    assert m["speakers"]["a"]["x"] == 2 and not m["complete"]


def test_a_damaged_chunk_is_named(ten_thousand, model, tmp_path):
    _, names, rows = ten_thousand
    _, _, template = model
    mine = workdir_lib.Workdir(tmp_path)
    bank.write_chunk(mine, 0, rows[:3], names[:3], [{"speaker": s} for s in names[:3]], template)
    assert bank.is_valid(mine, 0)
    arrays = mine.chunk(0) / workdir_lib.CHUNK_ARRAYS
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 1
    arrays.write_bytes(bytes(data))
    with pytest.raises(bank.DamagedChunk, match="does not match its checksum"):
        bank.read_record(mine, 0)
    arrays.write_bytes(bytes(data[:-4]))
    with pytest.raises(bank.DamagedChunk, match="bytes, expected"):
        bank.read_record(mine, 0, verify=False)
