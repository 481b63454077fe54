"""Word-timing numerics against transformers' own DTW and median filter."""

import numpy as np
import pytest

from pqm_jax.models.whisper import alignment

gw = pytest.importorskip("transformers.models.whisper.generation_whisper")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape", [(5, 40), (12, 30), (1, 7)])
def test_dtw_path_equals_transformers(shape):
    cost = np.random.default_rng(shape[0]).normal(size=shape)
    ours = alignment.dtw(cost)
    theirs = gw._dynamic_time_warping(cost)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


@pytest.mark.parametrize("width", [1, 3, 7])
def test_median_filter_equals_transformers(width):
    x = np.random.default_rng(width).normal(size=(2, 3, 5, 20)).astype(np.float32)
    theirs = gw._median_filter(torch.from_numpy(x), width).numpy()
    np.testing.assert_allclose(alignment.median_filter(x, width), theirs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="odd"):
        alignment.median_filter(x, 4)


def test_a_diagonal_attention_times_tokens_in_order():
    t, s = 4, 40
    w = np.zeros((2, t, s))
    for k in range(t):
        w[:, k, 10 * k : 10 * k + 10] = 1.0  # token k attends to frames 10k..10k+9
    starts = alignment.token_starts(w, frames=2 * s)
    np.testing.assert_allclose(starts, [0.0, 0.2, 0.4, 0.6], atol=0.021)


def test_words_group_tokens_and_end_where_the_next_begins():
    pieces = {1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: "."}
    found = alignment.words(
        [1, 2, 3, 4, 5], np.array([0.1, 0.5, 0.6, 0.9, 1.2, 1.3]), piece=pieces.get,
        offset_s=10.0, end_s=11.25,
    )  # fmt: skip
    assert [(w.word, w.start, w.end) for w in found] == [
        (" Hello,", 10.1, 10.6),
        (" world.", 10.6, 11.25),
    ]
