"""Long-form transcription: audio of any length as timed segments, two ways.

`sequential` is openai-whisper's `transcribe` (and transformers' long-form `generate`): decode a
30 s window with timestamp tokens, cut its tokens into segments at each pair of timestamps, and
seek to the last complete segment's end (or past the window when it ended cleanly); windows of
several files advance together, one batch per step. A window whose text is too repetitive
(gzip compression ratio) or too unlikely (average log-probability) is decoded again at the next
temperature; a window the model calls silent (no-speech probability) is skipped.

`chunked` is whisper-jax's and transformers' pipeline approach: cut the audio into 30 s chunks
overlapping by `stride_s` on each side, decode all chunks as batches at once, and keep each
segment from the chunk that owns its middle (a chunk owns its span minus the strides it shares).
Segment edges near chunk borders may differ from `sequential` (on a 2-core CPU it was not faster).

Both take a `decode(mel, rows, options, key) -> decoding.Result` callable (jitted Whisper with
its adapters; `rows` says which file each window is from) and 16 kHz log-mel of the whole audio.
Times are in seconds from the start of each file.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import jax
import numpy as np

from pqm_jax.models.whisper import alignment, decoding

WINDOW = 3000  # mel frames of one 30 s window
FRAME_S = 0.01  # one mel frame (hop 160 at 16 kHz)
STAMP_S = 0.02  # one timestamp step (the encoder halves the frames)
Decode = Callable[[np.ndarray, Sequence[int], decoding.DecodeOptions, jax.Array], decoding.Result]
# align(window [n_mels, W], file index, text ids, real frames) -> [len(ids) + 1] token starts (s)
Align = Callable[[np.ndarray, int, list[int], int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Options:
    """How windows are decoded and checked (defaults: transformers' long-form `generate`).

    Attributes:
      temperatures: tried in order until a window passes the thresholds (openai-whisper's CLI:
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)); the last one is kept whatever it gives.
      compression_ratio_threshold: redecode when gzip's ratio of the text exceeds it (2.4).
      logprob_threshold: redecode when the average log-probability per token is below it (-1.0).
      no_speech_threshold: skip a window whose no-speech probability exceeds it and whose
        average log-probability is below `logprob_threshold` (0.6).
      batch_size: windows per decoding call (padded, so one compilation serves all).
      seed: sampling key of the temperature fallback.
    """

    temperatures: tuple[float, ...] = (0.0,)
    compression_ratio_threshold: float | None = None
    logprob_threshold: float | None = None
    no_speech_threshold: float | None = None
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        if not self.temperatures or min(self.temperatures) < 0:
            raise ValueError(f"temperatures must be >= 0 and not empty, got {self.temperatures}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One timed piece of a transcript.

    Attributes:
      start, end: seconds from the start of the file.
      tokens: the segment's ids, timestamp tokens included.
      text: its text.
      avg_logprob, compression_ratio, no_speech_prob, temperature: of the window it came from.
      words: word timestamps (`alignment.Word`), when asked for.
    """

    start: float
    end: float
    tokens: tuple[int, ...]
    text: str
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    words: tuple[alignment.Word, ...] = ()


@dataclasses.dataclass(frozen=True)
class Transcript:
    """A file's segments; `text` joins them."""

    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text).strip()


@dataclasses.dataclass(frozen=True)
class _Window:
    """One decoded window: its generated ids (end-of-text dropped) and their scores."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


def compression_ratio(text: str) -> float:
    """Bytes of `text` over bytes of its zlib compression (openai-whisper's repetition check)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def split_window(
    tokens: Sequence[int], *, timestamp_begin: int, offset_s: float, frames: int
) -> tuple[list[tuple[float, float, list[int]]], int]:
    """Cuts one window's tokens into (start, end, tokens) segments and says how far to seek.

    The rules of transformers' `_retrieve_segment` (openai-whisper's are the same): each pair of
    consecutive timestamps closes a segment; a window that ends on a single timestamp is
    complete (seek past it all), otherwise the words after the last pair are dropped and the
    next window starts at that pair. Without any pair the window is one segment ending at its
    last timestamp (or its end).

    Args:
      tokens: generated ids without end-of-text.
      timestamp_begin: id of `<|0.00|>`.
      offset_s: time of the window's first frame.
      frames: real (unpadded) mel frames in the window.

    Example: `<|0.00|> a <|1.00|><|1.00|> b <|2.00|>` (a single timestamp at the end) gives
    segments (0, 1) "a" and (1, 2) "b" and seeks the whole window; `... b <|2.00|><|2.00|> c`
    drops "c" and seeks to 2.00 s.

    Returns:
      (segments, frames to advance).
    """
    is_ts = [t >= timestamp_begin for t in tokens]
    single_end = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    time = lambda tok: offset_s + (tok - timestamp_begin) * STAMP_S
    if not cuts:
        stamps = [t for t in tokens if t >= timestamp_begin]
        end = offset_s + (frames // 2) * STAMP_S  # transformers' rounding
        if stamps and stamps[-1] != timestamp_begin:
            end = time(stamps[-1])
        return [(offset_s, end, list(tokens))], frames
    if single_end:
        cuts.append(len(tokens))
    else:
        cuts[-1] += 1  # the last pair's first timestamp closes the last segment
    out, last = [], 0
    for i, cut in enumerate(cuts):
        piece = list(tokens[last:cut])
        end_at = -1 if i < len(cuts) - 1 or single_end else -2
        out.append((time(piece[0]), time(piece[end_at]), piece))
        last = cut
    if single_end:
        return out, frames
    return out, (tokens[last - 2] - timestamp_begin) * 2


def _window_result(res: decoding.Result, j: int, temperature: float, tok_text) -> _Window:
    n = int(res.lengths[j])
    ids = [int(t) for t in np.asarray(res.tokens[j, :n])]
    return _Window(
        tokens=ids,
        avg_logprob=float(res.scores[j]) / (n + 1),  # openai-whisper: end-of-text counted
        no_speech_prob=float(res.no_speech[j]),
        temperature=temperature,
        compression_ratio=compression_ratio(tok_text(ids)),
    )


def _needs_fallback(w: _Window, opts: Options) -> bool:
    """openai-whisper's rule: too repetitive or too unlikely, unless it is silence (no speech
    and unlikely: it will be skipped, sampling cannot help)."""
    too_repetitive = (
        opts.compression_ratio_threshold is not None
        and w.compression_ratio > opts.compression_ratio_threshold
    )
    too_unlikely = opts.logprob_threshold is not None and w.avg_logprob < opts.logprob_threshold
    silence = (
        opts.no_speech_threshold is not None
        and w.no_speech_prob > opts.no_speech_threshold
        and too_unlikely
    )
    return (too_repetitive or too_unlikely) and not silence


def _silent(w: _Window, opts: Options) -> bool:
    if opts.no_speech_threshold is None or w.no_speech_prob <= opts.no_speech_threshold:
        return False
    return opts.logprob_threshold is None or w.avg_logprob < opts.logprob_threshold


def decode_windows(
    decode: Decode,
    windows: list[np.ndarray],
    rows: list[int],
    *,
    base: decoding.DecodeOptions,
    opts: Options,
    tok_text: Callable[[list[int]], str],
    key: jax.Array,
) -> list[_Window]:
    """Decodes [n_mels, 3000] windows in padded batches with the temperature fallback."""
    out: list[_Window | None] = [None] * len(windows)
    todo = list(range(len(windows)))
    for k, temperature in enumerate(opts.temperatures):
        options = dataclasses.replace(base, temperature=temperature)
        redo = []
        for b in range(0, len(todo), opts.batch_size):
            idx = todo[b : b + opts.batch_size]
            pad = opts.batch_size - len(idx)
            mel = np.stack([windows[i] for i in idx] + [windows[idx[-1]]] * pad)
            who = [rows[i] for i in idx] + [rows[idx[-1]]] * pad
            res = decode(mel, who, options, jax.random.fold_in(key, k * 100_003 + b))
            res = jax.tree.map(np.asarray, res)
            for j, i in enumerate(idx):
                out[i] = _window_result(res, j, temperature, tok_text)
                if k + 1 < len(opts.temperatures) and _needs_fallback(out[i], opts):
                    redo.append(i)
        todo = redo
        if not todo:
            break
    return out  # type: ignore[return-value]


def _segments(window: _Window, spans, tok_text) -> list[Segment]:
    return [
        Segment(
            start=round(start, 3),
            end=round(end, 3),
            tokens=tuple(ids),
            text=tok_text(ids),
            avg_logprob=window.avg_logprob,
            compression_ratio=window.compression_ratio,
            no_speech_prob=window.no_speech_prob,
            temperature=window.temperature,
        )
        for start, end, ids in spans
    ]


def with_words(
    segments: list[Segment],
    *,
    align: Align,
    window: np.ndarray,
    file: int,
    frames: int,
    offset_s: float,
    timestamp_begin: int,
    piece: Callable[[int], str],
) -> list[Segment]:
    """`segments` of one window with word timestamps: one alignment pass over all their text
    tokens (openai-whisper's `add_word_timestamps`), words handed back to their segments."""
    texts = [[t for t in s.tokens if t < timestamp_begin] for s in segments]
    flat = [t for ids in texts for t in ids]
    if not flat:
        return segments
    starts = np.asarray(align(window, file, flat, frames))
    out, k = [], 0
    for seg, ids in zip(segments, texts, strict=True):
        if not ids:
            out.append(seg)
            continue
        found = alignment.words(
            ids, starts[k : k + len(ids) + 1], piece=piece, offset_s=offset_s, end_s=seg.end
        )
        # a word cannot start before its segment (the attention may look a little early)
        found = [dataclasses.replace(w, start=max(w.start, seg.start)) for w in found]
        out.append(dataclasses.replace(seg, words=tuple(found)))
        k += len(ids)
    return out


def _window_at(mel: np.ndarray, start: int, window: int) -> tuple[np.ndarray, int]:
    """[n_mels, window] from frame `start` (zero-padded past the end, as transformers does)
    and the number of real frames in it."""
    piece = mel[:, start : start + window]
    frames = piece.shape[1]
    if frames < window:
        piece = np.pad(piece, [(0, 0), (0, window - frames)])
    return piece, frames


def sequential(
    decode: Decode,
    mels: Sequence[np.ndarray],
    *,
    base: decoding.DecodeOptions,
    opts: Options,
    tok_text: Callable[[list[int]], str],
    progress: Callable[[int], None] | None = None,
    window: int = WINDOW,
    align: Align | None = None,
    piece: Callable[[int], str] | None = None,
) -> list[Transcript]:
    """Seek-and-decode over whole files (see the module docstring).

    Args:
      decode: the jitted model (`Decode`).
      mels: per file log-mel [n_mels, frames] of the whole audio (`features.log_mel_windows` of
        the unpadded samples).
      base: decoding options with timestamps (`timestamp_begin` set).
      opts: fallback thresholds and batch size.
      tok_text: ids -> text (timestamps and specials skipped).
      progress: called with the frames each step advanced (for a progress bar).
      window: mel frames the model reads (3000; fewer for a run trained on shorter windows).
      align, piece: word timestamps (`with_words`): the aligner and id -> raw token text.

    Returns:
      one `Transcript` per file.
    """
    if base.timestamp_begin is None:
        raise ValueError("long-form decoding needs DecodeOptions.timestamp_begin")
    key = jax.random.key(opts.seed)
    seek = [0] * len(mels)
    found: list[list[Segment]] = [[] for _ in mels]
    step = 0
    while True:
        active = [i for i, m in enumerate(mels) if seek[i] < m.shape[1]]
        if not active:
            break
        cut = [_window_at(mels[i], seek[i], window) for i in active]
        windows = decode_windows(
            decode,
            [c[0] for c in cut],
            active,
            base=base,
            opts=opts,
            tok_text=tok_text,
            key=jax.random.fold_in(key, step),
        )
        for i, (_, frames), w in zip(active, cut, windows, strict=True):
            before = seek[i]
            if _silent(w, opts) or not w.tokens:
                seek[i] += frames
            else:
                spans, advance = split_window(
                    w.tokens,
                    timestamp_begin=base.timestamp_begin,
                    offset_s=seek[i] * FRAME_S,
                    frames=frames,
                )
                segs = _segments(w, spans, tok_text)
                if align is not None:
                    segs = with_words(
                        segs,
                        align=align,
                        window=cut[active.index(i)][0],
                        file=i,
                        frames=frames,
                        offset_s=seek[i] * FRAME_S,
                        timestamp_begin=base.timestamp_begin,
                        piece=piece,
                    )
                found[i] += segs
                seek[i] += max(advance, 1)  # a window that cannot advance would loop forever
            if progress is not None:
                progress(min(seek[i], mels[i].shape[1]) - before)
        step += 1
    return [Transcript(tuple(f)) for f in found]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk of a file: samples [start, stop) and the span [own_start, own_stop) it owns."""

    file: int
    start: int
    stop: int
    own_start: float
    own_stop: float
    rate: int = 16_000

    @property
    def start_s(self) -> float:
        return self.start / self.rate

    @property
    def stop_s(self) -> float:
        return self.stop / self.rate


def plan_chunks(
    lengths: Sequence[int], *, rate: int, chunk_s: float, stride_s: float
) -> list[Chunk]:
    """Chunks of `chunk_s` seconds every `chunk_s - 2 * stride_s` seconds; neighbours share
    `stride_s` on each side and split the overlap in the middle of it."""
    if not 0 <= 2 * stride_s < chunk_s:
        raise ValueError(f"stride_s must be in [0, chunk_s / 2), got {stride_s} for {chunk_s}")
    size, hop = round(chunk_s * rate), round((chunk_s - 2 * stride_s) * rate)
    out = []
    for f, n in enumerate(lengths):
        starts = list(range(0, max(n - 2 * round(stride_s * rate), 1), hop)) or [0]
        for k, s in enumerate(starts):
            first, last = k == 0, k == len(starts) - 1
            out.append(
                Chunk(
                    file=f,
                    start=s,
                    stop=min(s + size, n),
                    own_start=0.0 if first else (s + stride_s * rate) / rate,
                    own_stop=float("inf") if last else (s + size - stride_s * rate) / rate,
                    rate=rate,
                )
            )
    return out


def chunked(
    decode: Decode,
    audios: Sequence[np.ndarray],
    *,
    features: Callable[[list[np.ndarray]], np.ndarray],
    base: decoding.DecodeOptions,
    opts: Options,
    tok_text: Callable[[list[int]], str],
    rate: int = 16_000,
    chunk_s: float = 30.0,
    stride_s: float = 5.0,
) -> list[Transcript]:
    """Batched chunked decoding (see the module docstring).

    Args:
      audios: per file 16 kHz samples.
      features: samples of chunks -> [B, n_mels, 3000] log-mel (each chunk its own window).
      chunk_s, stride_s: chunk length and the overlap shared with each neighbour.
    """
    if base.timestamp_begin is None:
        raise ValueError("long-form decoding needs DecodeOptions.timestamp_begin")
    chunks = plan_chunks([len(a) for a in audios], rate=rate, chunk_s=chunk_s, stride_s=stride_s)
    windows = []
    for b in range(0, len(chunks), opts.batch_size):
        part = chunks[b : b + opts.batch_size]
        windows += list(features([audios[c.file][c.start : c.stop] for c in part]))
    decoded = decode_windows(
        decode,
        windows,
        [c.file for c in chunks],
        base=base,
        opts=opts,
        tok_text=tok_text,
        key=jax.random.key(opts.seed),
    )
    per_file: list[list[list[Segment]]] = [[] for _ in audios]
    for c, w in zip(chunks, decoded, strict=True):
        if _silent(w, opts) or not w.tokens:
            per_file[c.file].append([])
            continue
        frames = -(-(c.stop - c.start) // 160)
        spans = _chunk_spans(w.tokens, base.timestamp_begin, c.start / rate, frames)
        # past the chunk's audio there is only padding: what is "heard" there is made up
        spans = [(a, min(b, c.stop_s), ids) for a, b, ids in spans if a < c.stop_s]
        per_file[c.file].append(_segments(w, spans, tok_text))
    out = []
    for f, parts in enumerate(per_file):
        owned = [c for c in chunks if c.file == f]
        out.append(Transcript(tuple(stitch(parts, owned, base.timestamp_begin, tok_text))))
    return out


def stitch(
    parts: list[list[Segment]], chunks: list[Chunk], timestamp_begin: int, tok_text
) -> list[Segment]:
    """One file's segments from its chunks' segments, overlaps removed.

    Neighbouring chunks hear the same `stride_s` seconds twice. As transformers' pipeline does,
    the text tokens of the two are aligned where they agree best (the shift with the largest
    share of equal tokens, at least two) and cut in the middle of that agreement; only tokens
    placed (by linear interpolation inside their segment) near the shared seconds take part, so
    that a common pair of tokens far away cannot pass for the overlap. Segments keep their own
    timestamps, a segment cut at the join starts or ends at the join's time. Without such an
    agreement (silence, or the chunks wrote it differently) each token is kept by the chunk that
    owns its interpolated time.
    """
    merged: list[tuple[int, int, int, int]] = []  # (token, chunk, segment, position in it)
    for c, segs in enumerate(parts):
        seq = [
            (t, c, k, n)
            for k, seg in enumerate(segs)
            for n, t in enumerate(seg.tokens)
            if t < timestamp_begin
        ]
        if not merged:
            merged = seq
            continue
        lo, hi = chunks[c].start_s - _MARGIN_S, chunks[c - 1].stop_s + _MARGIN_S
        tail = sum(1 for m in merged if _time(parts, m) >= lo)
        head = sum(1 for q in seq if _time(parts, q) <= hi)
        shift = _best_overlap(
            [m[0] for m in merged[len(merged) - tail :]], [q[0] for q in seq[:head]]
        )
        if shift is None:  # each token stays with the chunk that owns its (interpolated) time
            keep_left = [m for m in merged if _time(parts, m) < chunks[c - 1].own_stop]
            merged = keep_left + [q for q in seq if _time(parts, q) >= chunks[c].own_start]
        else:
            overlap, mid = shift
            merged = merged[: len(merged) - overlap + mid] + seq[mid:]
    out: list[Segment] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for t, c, k, _ in merged:
        groups.setdefault((c, k), []).append(t)
    order = list(dict.fromkeys((c, k) for _, c, k, _ in merged))
    for c, k in order:
        seg = parts[c][k]
        ids = groups[(c, k)]
        whole = len(ids) == sum(t < timestamp_begin for t in seg.tokens)
        start, end = seg.start, seg.end
        if not whole:  # cut at a join: the cut side takes the chunk's own border
            if (c, k) == order[0] or order[order.index((c, k)) - 1][0] == c:
                end = min(end, chunks[c].own_stop)
            else:
                start = max(start, chunks[c].own_start)
        out.append(
            dataclasses.replace(
                seg, start=start, end=max(end, start), tokens=tuple(ids), text=tok_text(ids)
            )
        )
    return [s for s in out if s.text]


_MARGIN_S = 2.0  # how far from the shared seconds a token's interpolated time may fall


def _time(parts, item) -> float:
    """A text token's time, interpolated between its segment's start and end."""
    _, c, k, n = item
    seg = parts[c][k]
    return seg.start + (n + 0.5) / max(len(seg.tokens), 1) * (seg.end - seg.start)


def _best_overlap(left: list[int], right: list[int]) -> tuple[int, int] | None:
    """(overlap length i, cut position in it) aligning `left`'s last i tokens with `right`'s
    first i where the most tokens agree (ties: the longer overlap); None below two matches."""
    best, best_score = None, 0.0
    for i in range(1, min(len(left), len(right)) + 1):
        a, b = left[len(left) - i :], right[:i]
        matches = sum(x == y for x, y in zip(a, b, strict=True))
        score = matches / i + i / 10_000
        if matches >= 2 and score > best_score:
            same = [n for n in range(i) if a[n] == b[n]]
            best, best_score = (i, (same[0] + same[-1] + 1) // 2), score
    return best


def _chunk_spans(tokens: list[int], timestamp_begin: int, offset_s: float, frames: int):
    """All of a chunk's segments, the unfinished last one included (it ends at the chunk's end:
    the neighbour that owns that time decodes it whole)."""
    spans, advance = split_window(
        tokens, timestamp_begin=timestamp_begin, offset_s=offset_s, frames=frames
    )
    if advance == frames:
        return spans
    used = sum(len(s[2]) for s in spans)
    rest = tokens[used:]
    if any(t < timestamp_begin for t in rest):
        spans.append((spans[-1][1], offset_s + frames * FRAME_S, rest))
    return spans
