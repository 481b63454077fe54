"""Batching over plain numpy examples: bucketing, pad + mask, [speaker, batch, ...] batches for
`vmap`, a background prefetch thread, and host sharding of speakers.

An example is a dict of numpy arrays, e.g. {"features": [frames, 80], "tokens": [length]}.
Arrays with a leading length axis are padded along it and get a boolean mask `{key}_mask`
[..., length]; 0-d arrays are stacked. Featurising and tokenising happen elsewhere.
"""

from __future__ import annotations

import math
import queue
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

MASK_SUFFIX = "_mask"


def pad(
    arrays: Sequence[np.ndarray], *, length: int | None = None, pad_value: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks arrays [len_i, ...] into ([n, length, ...], mask [n, length] bool).

    `length` defaults to the longest; a longer array raises ValueError (filter or truncate
    upstream: silent truncation would desynchronise audio and transcript).
    """
    if not arrays:
        raise ValueError("nothing to pad")
    longest = max(a.shape[0] for a in arrays)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"an example has length {longest} > pad length {length}")
    first = np.asarray(arrays[0])
    out = np.full((len(arrays), length, *first.shape[1:]), pad_value, dtype=first.dtype)
    mask = np.zeros((len(arrays), length), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    return out, mask


def collate(
    examples: Sequence[Mapping[str, np.ndarray]],
    *,
    lengths: Mapping[str, int] | None = None,
    pad_values: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Batches examples: {key: [n, (length,) ...]} plus `{key}_mask` [n, length] for each
    array key. `lengths` fixes the padded length per key (default: longest in the batch)."""
    lengths = lengths or {}
    pad_values = pad_values or {}
    out: dict[str, np.ndarray] = {}
    for key in examples[0]:
        values = [np.asarray(ex[key]) for ex in examples]
        if values[0].ndim == 0:
            out[key] = np.stack(values)
            continue
        out[key], out[key + MASK_SUFFIX] = pad(
            values, length=lengths.get(key), pad_value=pad_values.get(key, 0)
        )
    return out


def bucket_batches(
    lengths: Sequence[int],
    *,
    batch_size: int,
    boundaries: Sequence[int],
    seed: int | None = None,
    drop_remainder: bool = False,
) -> list[tuple[int, np.ndarray]]:
    """Groups example indices into batches of similar length.

    Each example goes to the first bucket whose boundary is >= its length; batches never mix
    buckets. Returns [(bucket boundary = pad length, indices [<= batch_size])]. With `seed`,
    examples within buckets and the order of batches are shuffled; without, both keep input
    order (batches sorted by bucket).
    """
    bounds = sorted(boundaries)
    lengths = np.asarray(lengths)
    if lengths.size and lengths.max() > bounds[-1]:
        raise ValueError(f"length {lengths.max()} exceeds the largest boundary {bounds[-1]}")
    which = np.searchsorted(bounds, lengths, side="left")
    rng = None if seed is None else np.random.default_rng(seed)
    batches = []
    for b, bound in enumerate(bounds):
        idx = np.flatnonzero(which == b)
        if rng is not None:
            idx = rng.permutation(idx)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            if len(chunk) == batch_size or not drop_remainder:
                batches.append((bound, chunk))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def bucketed(
    examples: Sequence[Mapping[str, np.ndarray]],
    *,
    key: str,
    batch_size: int,
    boundaries: Sequence[int],
    lengths: Mapping[str, int] | None = None,
    pad_values: Mapping[str, float] | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields batches bucketed by the length of `examples[i][key]`, that key padded to its
    bucket boundary (so only len(boundaries) shapes reach `jit`); other keys padded to
    `lengths[k]` or the batch's longest. Adds "index" [n], the examples' positions."""
    plan = bucket_batches(
        [len(ex[key]) for ex in examples],
        batch_size=batch_size,
        boundaries=boundaries,
        seed=seed,
        drop_remainder=drop_remainder,
    )
    for bound, idx in plan:
        batch = collate(
            [examples[i] for i in idx],
            lengths={**(lengths or {}), key: bound},
            pad_values=pad_values,
        )
        batch["index"] = idx.astype(np.int32)
        yield batch


def steps_per_epoch(sizes: Iterable[int], batch_size: int) -> int:
    """Steps for the largest speaker to see all its examples once."""
    return max(math.ceil(n / batch_size) for n in sizes)


def speaker_batches(
    examples_by_speaker: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    *,
    batch_size: int,
    lengths: Mapping[str, int],
    pad_values: Mapping[str, float] | None = None,
    seed: int = 0,
    steps: int | None = None,
    epochs: int | None = None,
    wrap: bool = True,
    num_slots: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape per-speaker batches for `vmap` over speakers.

    Speakers are taken in sorted order (slot s = s-th sorted speaker). Each step, every speaker
    contributes `batch_size` examples from its own stream: seeded per-epoch permutations of
    its examples, determined by (`seed`, speaker, epoch) only, so a speaker's batches do not
    depend on which other speakers share the host.

    Yields dicts with every key [S, B, ...] (array keys padded to the fixed `lengths[key]`,
    with `{key}_mask` [S, B, length]), plus
      "example_mask" [S, B] bool: False for filler (padded slots; with `wrap=False`, a
        speaker that finished its epochs),
      "speaker_mask" [S] bool: False for the padded slots beyond the real speakers,
      "epoch" [S] int32: the epoch of each speaker's first example in the batch.
    Runs for `steps`, or `epochs` x `steps_per_epoch` (largest speaker), or forever.
    With `wrap` (default) a smaller speaker cycles; without, it is masked after `epochs`.
    `num_slots` pads S with empty speakers (e.g. the same S on every host).
    """
    speakers = sorted(examples_by_speaker)
    if not speakers:
        raise ValueError("no speakers")
    sizes = [len(examples_by_speaker[s]) for s in speakers]
    if min(sizes) == 0:
        raise ValueError(f"speaker {speakers[sizes.index(0)]} has no examples")
    n_slots = num_slots or len(speakers)
    if n_slots < len(speakers):
        raise ValueError(f"num_slots {n_slots} < {len(speakers)} speakers")
    if steps is None and epochs is not None:
        steps = epochs * steps_per_epoch(sizes, batch_size)
    limit = None if wrap or epochs is None else epochs
    streams = [_stream(s, n, seed) for s, n in zip(speakers, sizes)]
    filler = examples_by_speaker[speakers[0]][0]
    step = 0
    while steps is None or step < steps:
        rows, valid, epoch = [], np.zeros((n_slots, batch_size), bool), np.zeros(n_slots, np.int32)
        for slot in range(n_slots):
            if slot >= len(speakers):
                rows += [filler] * batch_size
                continue
            picks = [next(streams[slot]) for _ in range(batch_size)]
            epoch[slot] = picks[0][0]
            for b, (ep, i) in enumerate(picks):
                ok = limit is None or ep < limit
                valid[slot, b] = ok
                rows.append(examples_by_speaker[speakers[slot]][i] if ok else filler)
        flat = collate(rows, lengths=lengths, pad_values=pad_values)
        batch = {k: v.reshape(n_slots, batch_size, *v.shape[1:]) for k, v in flat.items()}
        for k in batch:
            if k.endswith(MASK_SUFFIX):
                batch[k] &= valid[:, :, None]
        batch["example_mask"] = valid
        batch["speaker_mask"] = np.arange(n_slots) < len(speakers)
        batch["epoch"] = epoch
        yield batch
        step += 1


def _stream(speaker: str, n: int, seed: int) -> Iterator[tuple[int, int]]:
    """(epoch, index) forever: a fresh seeded permutation of range(n) each epoch."""
    epoch = 0
    while True:
        rng = np.random.default_rng([seed, zlib.crc32(speaker.encode()), epoch])
        for i in rng.permutation(n):
            yield epoch, int(i)
        epoch += 1


def shard_speakers(speakers: Iterable[str], process_index: int, process_count: int) -> list[str]:
    """This host's speakers: every `process_count`-th of the sorted unique speakers, starting
    at `process_index`. Across hosts the shards are disjoint and cover every speaker once."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return sorted(set(speakers))[process_index::process_count]


def slots_per_host(n_speakers: int, process_count: int) -> int:
    """Speaker slots each host needs so all hosts share one batch shape (`num_slots`)."""
    return math.ceil(n_speakers / process_count)


class Prefetch:
    """Iterates `source` in a background thread, keeping up to `size` items ready.

    `transfer` (e.g. `jax.device_put`) runs in the thread too, so host-to-device copies
    overlap the step. Exceptions in the source are re-raised in the consumer. Use as an
    iterator; `close()` (or leaving a `with` block) stops the thread.
    """

    _DONE = object()

    def __init__(
        self, source: Iterable, *, size: int = 2, transfer: Callable | None = None
    ) -> None:
        if size < 1:
            raise ValueError("prefetch size must be >= 1")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(iter(source), transfer), daemon=True, name="pqm-prefetch"
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator, transfer: Callable | None) -> None:
        try:
            for item in it:
                if not self._put(("item", transfer(item) if transfer else item)):
                    return
        except BaseException as e:  # handed to the consumer, re-raised there
            self._put(("error", e))
            return
        self._put(("done", None))

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._stop.set()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch(source: Iterable, *, size: int = 2, transfer: Callable | None = None) -> Prefetch:
    """`Prefetch(source, size=size, transfer=transfer)`."""
    return Prefetch(source, size=size, transfer=transfer)
