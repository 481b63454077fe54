"""Long-form bookkeeping on scripted decoders: segment cuts and seeking (transformers' rules),
the temperature fallback, silence, chunk plans and the stitching of overlapping chunks."""

from __future__ import annotations

import numpy as np
import pytest

from pqm_jax.models.whisper import decoding, longform

TB = 1000  # <|0.00|>; text ids are below 900, end-of-text is 900
EOT = 900
BASE = decoding.DecodeOptions(prompt=(901,), eot=EOT, timestamp_begin=TB)


def ts(seconds: float) -> int:
    return TB + round(seconds / 0.02)


def text(ids) -> str:
    return " ".join(f"w{i}" for i in ids if i < EOT)


def test_pairs_cut_segments_and_a_single_ending_seeks_the_whole_window():
    toks = [ts(0), 1, 2, ts(1.5), ts(1.5), 3, ts(4)]
    spans, advance = longform.split_window(toks, timestamp_begin=TB, offset_s=10.0, frames=3000)
    assert [(a, b, [t for t in ids if t < TB]) for a, b, ids in spans] == [
        (10.0, 11.5, [1, 2]),
        (11.5, 14.0, [3]),
    ]
    assert advance == 3000


def test_an_unfinished_last_segment_is_dropped_and_the_seek_stops_at_its_start():
    toks = [ts(0), 1, ts(2), ts(2), 2, ts(6.5), ts(6.5), 3, 4]
    spans, advance = longform.split_window(toks, timestamp_begin=TB, offset_s=0.0, frames=3000)
    assert [(a, b) for a, b, _ in spans] == [(0.0, 2.0), (2.0, 6.5)]
    assert all(3 not in ids for _, _, ids in spans)
    assert advance == 650  # 6.5 s in mel frames


def test_a_window_without_pairs_is_one_segment():
    spans, advance = longform.split_window(
        [ts(0), 1, 2, ts(3)], timestamp_begin=TB, offset_s=5.0, frames=1200
    )
    assert [(a, b) for a, b, _ in spans] == [(5.0, 8.0)] and advance == 1200
    spans, _ = longform.split_window([ts(0), 1, 2], timestamp_begin=TB, offset_s=0.0, frames=1201)
    assert spans[0][1] == pytest.approx(12.0)  # no closing stamp: the window's end


class Script:
    """A decoder that answers each window from a table keyed by its first mel value."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, mel, rows, options, key):
        del key
        out_tokens, lengths, scores, no_speech = [], [], [], []
        for m in mel:
            ids, avg, ns = self.answers(float(m[0, 0]), options.temperature)
            self.calls.append((float(m[0, 0]), options.temperature))
            out_tokens.append(ids + [EOT] * (64 - len(ids)))
            lengths.append(len(ids))
            scores.append(avg * (len(ids) + 1))
            no_speech.append(ns)
        return decoding.Result(
            tokens=np.asarray(out_tokens), lengths=np.asarray(lengths),
            scores=np.asarray(scores, np.float32), no_speech=np.asarray(no_speech, np.float32),
        )  # fmt: skip


def _mel(frames: int) -> np.ndarray:
    """Mel whose first row holds the frame index (so a window is known by where it starts)."""
    mel = np.zeros((4, frames), np.float32)
    mel[0] = np.arange(frames)
    return mel


def test_sequential_seeks_on_the_last_pair_and_offsets_times():
    def answers(start, temperature):
        if start == 0:  # ends mid-segment: resume at 20 s
            return [ts(0), 1, ts(20), ts(20), 2, 3], -0.1, 0.0
        return [ts(0), 4, ts(5)], -0.1, 0.0  # from 20 s: complete

    script = Script(answers)
    opts = longform.Options(batch_size=2)
    out = longform.sequential(script, [_mel(4000)], base=BASE, opts=opts, tok_text=text)
    segs = out[0].segments
    assert [(s.start, s.end, s.text) for s in segs] == [(0.0, 20.0, "w1"), (20.0, 25.0, "w4")]
    assert [c[0] for c in script.calls][::2] == [0.0, 2000.0]  # padded batch of 2: row repeated
    assert out[0].text == "w1 w4"


def test_fallback_redecodes_repetitive_or_unlikely_windows_and_skips_silence():
    looping = [ts(0), *([7, 8] * 30), ts(29)]

    def answers(start, temperature):
        if start == 0:
            return (looping if temperature < 0.4 else [ts(0), 5, ts(3)]), -0.2, 0.0
        return [ts(0), 6, ts(2)], -2.5, 0.9  # silence: unlikely and no speech

    opts = longform.Options(
        temperatures=(0.0, 0.2, 0.4, 0.6),
        compression_ratio_threshold=2.4,
        logprob_threshold=-1.0,
        no_speech_threshold=0.6,
        batch_size=1,
    )
    script = Script(answers)
    out = longform.sequential(script, [_mel(3000), _mel(3000) + 1], base=BASE, opts=opts,
                              tok_text=text)  # fmt: skip
    assert [(s.text, s.temperature) for s in out[0].segments] == [("w5", 0.4)]
    assert out[1].segments == ()  # skipped as silence, never resampled
    assert sorted(t for s, t in script.calls if s == 1.0) == [0.0]
    assert sorted(t for s, t in script.calls if s == 0.0) == [0.0, 0.2, 0.4]


def test_compression_ratio_flags_repetition():
    assert longform.compression_ratio("seven " * 40) > 2.4
    assert longform.compression_ratio("the quick brown fox jumps over the lazy dog") < 2.4


def test_chunks_overlap_by_the_stride_and_own_disjoint_spans():
    rate = 100
    chunks = longform.plan_chunks([7000], rate=rate, chunk_s=30, stride_s=5)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3000), (2000, 5000), (4000, 7000)]
    owned = [(c.own_start, c.own_stop) for c in chunks]
    assert owned == [(0.0, 25.0), (25.0, 45.0), (45.0, float("inf"))]
    assert longform.plan_chunks([100], rate=rate, chunk_s=30, stride_s=5)[0].stop == 100
    with pytest.raises(ValueError, match="stride_s"):
        longform.plan_chunks([100], rate=rate, chunk_s=10, stride_s=5)


def _seg(start, end, ids):
    return longform.Segment(start=start, end=end, tokens=tuple(ids), text=text(ids))


def test_stitching_cuts_overlapping_chunks_where_they_agree():
    rate = 100
    chunks = longform.plan_chunks([5000], rate=rate, chunk_s=30, stride_s=5)
    words = list(range(1, 41))  # one word every 1.25 s over 50 s
    left = [_seg(0.0, 30.0, words[:24])]
    right = [_seg(20.0, 50.0, words[16:])]
    out = longform.stitch([left, right], chunks, TB, text)
    ids = [t for s in out for t in s.tokens]
    assert ids == words
    assert out[0].start == 0.0 and out[-1].end == 50.0


def test_stitching_without_agreement_keeps_tokens_by_their_time():
    rate = 100
    chunks = longform.plan_chunks([5000], rate=rate, chunk_s=30, stride_s=5)
    left = [_seg(0.0, 10.0, [1, 2]), _seg(22.0, 29.0, [3, 4])]  # 3 at 23.75 s, 4 at 27.25 s
    right = [_seg(21.0, 29.0, [5, 6]), _seg(35.0, 40.0, [7])]  # 5 at 23 s, 6 at 27 s
    out = longform.stitch([left, right], chunks, TB, text)
    assert [s.tokens for s in out] == [(1, 2), (3,), (6,), (7,)]
    assert out[1].end == 25.0 and out[2].start == 25.0  # cut at the join
