"""Word timestamps from cross-attention: openai-whisper's `find_alignment`.

The decoder reads the prompt (with `<|notimestamps|>`), the window's text tokens and
end-of-text in one teacher-forced pass; the cross-attention weights of the model's alignment
heads (CTranslate2's `alignment_heads`, openai-whisper's `alignment_heads`), cut to the window's
real frames, are standardised over the tokens, median-filtered along time (width 7) and
averaged over the heads; dynamic time warping through the negated matrix then pairs each token
with the encoder frame (20 ms) where it starts. A word starts at the time of its first token and
ends where the next word starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

STAMP_S = 0.02  # one encoder position


@dataclasses.dataclass(frozen=True)
class Word:
    """A word with its times (seconds from the start of the file)."""

    start: float
    end: float
    word: str


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of `width` (odd) along the last axis, edges reflected."""
    if width <= 0 or width % 2 != 1:
        raise ValueError(f"median filter width must be odd, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic alignment of rows (tokens) to columns (frames) minimising the summed `cost`
    [T, S]; returns (row indices, column indices) of the path, ties broken as openai-whisper."""
    rows, cols = cost.shape
    acc = np.full((rows + 1, cols + 1), np.inf, np.float64)
    trace = -np.ones((rows + 1, cols + 1), np.int8)
    acc[0, 0] = 0.0
    for j in range(1, cols + 1):
        for i in range(1, rows + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            acc[i, j] = cost[i - 1, j - 1] + c
            trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path_i, path_j = rows, cols, [], []
    while i > 0 or j > 0:
        path_i.append(i - 1)
        path_j.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.asarray(path_i[::-1]), np.asarray(path_j[::-1])


def token_starts(weights: np.ndarray, frames: int, *, medfilt: int = 7) -> np.ndarray:
    """Start times (s, from the window's start) of the rows of `weights`.

    Args:
      weights: [heads, T, S] cross-attention of the alignment heads, one row per token read.
      frames: real mel frames of the window (encoder positions = frames // 2 are kept).
      medfilt: median filter width.

    Returns:
      [T] seconds: the frame where the DTW path first reaches each row.
    """
    w = weights[:, :, : max(frames // 2, 1)].astype(np.float64)
    std = w.std(axis=-2, keepdims=True)
    w = (w - w.mean(axis=-2, keepdims=True)) / np.where(std > 0, std, 1.0)
    matrix = median_filter(w, medfilt).mean(axis=0)
    rows, cols = dtw(-matrix)
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    return cols[jumps] * STAMP_S


def _is_punctuation(piece: str) -> bool:
    return all(not c.isalnum() for c in piece.strip())


def words(
    tokens: Sequence[int],
    starts: np.ndarray,
    *,
    piece: Callable[[int], str],
    offset_s: float,
    end_s: float,
) -> list[Word]:
    """Words of text `tokens` from per-token start times.

    Args:
      tokens: text ids of the window, in order.
      starts: [len(tokens) + 1] start times: one per token, then end-of-text's.
      piece: id -> its text with any leading space (the tokenizer's raw piece).
      offset_s: the window's time in the file.
      end_s: latest time a word may end (the window's last segment end).
    """
    groups: list[list[int]] = []
    for k, t in enumerate(tokens):
        text = piece(t)
        new_word = (text.startswith(" ") and not _is_punctuation(text)) or not groups
        if new_word:
            groups.append([k])
        else:
            groups[-1].append(k)
    out = []
    for g_index, group in enumerate(groups):
        nxt = groups[g_index + 1][0] if g_index + 1 < len(groups) else len(tokens)
        start = offset_s + float(starts[group[0]])
        end = min(offset_s + float(starts[nxt]), end_s)
        text = "".join(piece(tokens[k]) for k in group)
        out.append(Word(start=round(start, 3), end=round(max(end, start), 3), word=text))
    return out
