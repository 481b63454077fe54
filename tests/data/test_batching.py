"""Batching: pad + mask, bucketing, [speaker, batch] batches, prefetch, host sharding."""

import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqm_jax.data import batching


def _examples(lengths, *, tag=0):
    return [
        {
            "x": np.full((n, 2), tag * 1000 + i + 1, np.float32),
            "y": np.arange(n % 5 + 1),
            "id": np.int32(tag * 1000 + i),
        }
        for i, n in enumerate(lengths)
    ]


def test_pad_and_mask():
    out, mask = batching.pad([np.ones((2, 3)), np.ones((4, 3))], length=5, pad_value=-1)
    assert out.shape == (2, 5, 3) and mask.shape == (2, 5)
    assert mask.sum(1).tolist() == [2, 4]
    assert np.all(out[0, 2:] == -1) and np.all(out[1, :4] == 1)
    with pytest.raises(ValueError, match="length 4 > pad length 3"):
        batching.pad([np.ones(4)], length=3)


def test_collate_stacks_scalars_and_pads_arrays():
    batch = batching.collate(_examples([3, 1]), lengths={"x": 4}, pad_values={"y": -100})
    assert batch["x"].shape == (2, 4, 2) and batch["x_mask"].sum() == 4
    assert batch["y"].shape == (2, 4) and batch["y"][1, 2:].tolist() == [-100, -100]
    assert batch["id"].tolist() == [0, 1] and "id_mask" not in batch


@given(
    st.lists(st.integers(1, 100), min_size=1, max_size=200),
    st.integers(1, 16),
    st.one_of(st.none(), st.integers(0, 5)),
)
def test_bucket_batches_cover_each_example_once(lengths, batch_size, seed):
    bounds = [10, 25, 50, 100]
    plan = batching.bucket_batches(lengths, batch_size=batch_size, boundaries=bounds, seed=seed)
    seen = np.concatenate([idx for _, idx in plan])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for bound, idx in plan:
        assert len(idx) <= batch_size
        assert all(lengths[i] <= bound for i in idx)
        assert bound == bounds[0] or all(lengths[i] > bounds[bounds.index(bound) - 1] for i in idx)


def test_bucket_batches_deterministic_and_drop_remainder():
    lengths = list(range(1, 40))
    a = batching.bucket_batches(lengths, batch_size=4, boundaries=[20, 40], seed=1)
    b = batching.bucket_batches(lengths, batch_size=4, boundaries=[20, 40], seed=1)
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    dropped = batching.bucket_batches(
        lengths, batch_size=4, boundaries=[20, 40], drop_remainder=True
    )
    assert all(len(idx) == 4 for _, idx in dropped)
    with pytest.raises(ValueError, match="exceeds the largest boundary"):
        batching.bucket_batches([50], batch_size=1, boundaries=[40])


def test_bucketed_pads_to_bucket_boundary():
    examples = _examples([3, 9, 12, 4, 30])
    shapes = set()
    for batch in batching.bucketed(
        examples, key="x", batch_size=2, boundaries=[8, 16, 32], lengths={"y": 5}
    ):
        shapes.add(batch["x"].shape)
        for j, i in enumerate(batch["index"]):
            n = len(examples[i]["x"])
            assert batch["x_mask"][j].sum() == n and np.all(batch["x"][j, :n] == examples[i]["x"])
    assert shapes == {(2, 8, 2), (2, 16, 2), (1, 32, 2)}


def test_speaker_batches_shapes_masks_and_epochs():
    data = {"b": _examples([3, 4, 5], tag=2), "a": _examples([1, 2, 3, 4, 5, 6, 7], tag=1)}
    batches = list(
        batching.speaker_batches(
            data, batch_size=4, lengths={"x": 8, "y": 5}, epochs=1, num_slots=3
        )
    )
    assert len(batches) == 2  # ceil(7 / 4) steps for the largest speaker
    first = batches[0]
    assert first["x"].shape == (3, 4, 8, 2) and first["x_mask"].shape == (3, 4, 8)
    assert first["speaker_mask"].tolist() == [True, True, False]
    assert first["example_mask"].tolist() == [[True] * 4, [True] * 4, [False] * 4]
    assert not first["x_mask"][2].any()
    ids_a = np.concatenate([b["id"][0] for b in batches])
    assert sorted(ids_a[:7].tolist()) == list(range(1000, 1007))  # slot 0 = speaker "a"
    assert batches[1]["epoch"].tolist()[:2] == [0, 1]  # "b" (3 examples) wrapped into epoch 1
    for b in batches:  # every row of slot 1 comes from speaker "b"
        assert np.all((b["id"][1] >= 2000) & (b["id"][1] < 2003))


def test_speaker_batches_without_wrap_masks_finished_speakers():
    data = {"a": _examples([2] * 6, tag=1), "b": _examples([2] * 2, tag=2)}
    batches = list(
        batching.speaker_batches(data, batch_size=4, lengths={"x": 2, "y": 5}, epochs=1, wrap=False)
    )
    mask = np.stack([b["example_mask"] for b in batches])  # [steps, S, B]
    assert mask[:, 0].sum() == 6 and mask[:, 1].sum() == 2


def test_speaker_stream_independent_of_other_speakers():
    a = _examples([2] * 10, tag=1)
    alone = batching.speaker_batches({"a": a}, batch_size=3, lengths={"x": 2, "y": 5}, steps=5)
    mixed = batching.speaker_batches(
        {"a": a, "z": _examples([2] * 4, tag=9)}, batch_size=3, lengths={"x": 2, "y": 5}, steps=5
    )
    for x, y in zip(alone, mixed):
        assert np.array_equal(x["id"][0], y["id"][0])


@given(st.lists(st.text(min_size=1, max_size=4), max_size=60), st.integers(1, 9))
def test_shard_speakers_covers_all_exactly_once(names, count):
    shards = [batching.shard_speakers(names, i, count) for i in range(count)]
    flat = [s for shard in shards for s in shard]
    assert sorted(flat) == sorted(set(names))
    assert max(map(len, shards)) <= batching.slots_per_host(len(set(names)), count)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_speakers_rejects_bad_index():
    with pytest.raises(ValueError):
        batching.shard_speakers(["a"], 2, 2)


def test_prefetch_order_transfer_and_overlap():
    produced = []

    def slow_source():
        for i in range(6):
            time.sleep(0.01)
            produced.append(i)
            yield i

    with batching.prefetch(slow_source(), size=2, transfer=lambda x: x * 10) as it:
        time.sleep(0.1)
        assert len(produced) >= 2  # work happened before anyone asked
        assert list(it) == [0, 10, 20, 30, 40, 50]


def test_prefetch_propagates_errors():
    def broken():
        yield 1
        raise RuntimeError("boom")

    it = batching.prefetch(broken())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(it)


def test_prefetch_close_stops_thread():
    def forever():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    it = batching.prefetch(forever(), size=3)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert threading.active_count() == before
