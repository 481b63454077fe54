"""Training examples as arrays, and the deterministic order in which batches draw them.

`Examples` holds n utterances of one speaker (or of a pool) ready for the model: log-mel
windows and the decoder's inputs/targets/weights (see `steps`). Mel arrays may live in memory
or be loaded per batch from the feature cache (large speaker-independent pools).

Batch order is a pure function of (seed, stream name, position): every epoch is a fresh seeded
permutation, and batch t takes items [t * B, (t + 1) * B) of the concatenated epochs. So a run
resumed at step t draws exactly the batches an uninterrupted run would have drawn, without
replaying the ones before.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from pqm_jax.data import batching


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
    """n examples: token arrays in memory, mel in memory (`mel`) or loaded (`load_mel`).

    Attributes:
      ids: utterance ids [n].
      inputs, targets: int32 [n, T]; weights: float32 [n, T] (see `steps`).
      mel: float32 [n, n_mels, frames], or None when `load_mel(i) -> [n_mels, frames]` is given.
    """

    ids: tuple[str, ...]
    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    mel: np.ndarray | None = None
    load_mel: Callable[[int], np.ndarray] | None = None

    def __post_init__(self):
        if (self.mel is None) == (self.load_mel is None):
            raise ValueError("Examples needs exactly one of mel / load_mel")
        n = len(self.ids)
        if n == 0:
            raise ValueError("Examples needs at least one example")
        for name in ("inputs", "targets", "weights"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, ids {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Batch of rows `idx`: {"mel" [b, n_mels, frames], "inputs", "targets", "weights"}."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.mel is not None:
            mel = self.mel[idx]
        else:
            mel = np.stack([self.load_mel(int(i)) for i in idx])
        return {
            "mel": mel,
            "inputs": self.inputs[idx],
            "targets": self.targets[idx],
            "weights": self.weights[idx],
        }

    def in_memory(self) -> Examples:
        """These examples with every mel loaded into memory (itself when already there)."""
        if self.mel is not None:
            return self
        mel = np.stack([self.load_mel(i) for i in range(len(self))])
        return dataclasses.replace(self, mel=mel, load_mel=None)

    @property
    def mel_bytes(self) -> int:
        """Bytes of the mel of all examples once in memory."""
        one = self.mel[0] if self.mel is not None else self.load_mel(0)
        return len(self) * one.nbytes

    def filler(self, b: int) -> dict[str, np.ndarray]:
        """b copies of row 0 with zero weights: a batch that contributes nothing."""
        batch = self.take(np.zeros(b, np.int64))
        batch["weights"] = np.zeros_like(batch["weights"])
        return batch


def stream(seed: int, name: str, n: int, start: int, count: int) -> np.ndarray:
    """Items [start, start + count) of the endless stream of per-epoch permutations of range(n).

    Epoch e is `default_rng([seed, crc32(name), e]).permutation(n)`; the result depends on
    nothing else (not on which other streams share a batch, nor on earlier calls).
    """
    out = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, zlib.crc32(name.encode()), epoch]).permutation(n)
        take = perm[offset : offset + count - len(out)]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out, dtype=np.int64)


def batch_at(examples: Examples, *, seed: int, name: str, step: int, batch: int) -> dict:
    """Training batch number `step` of `examples`: [batch, ...]."""
    return examples.take(stream(seed, name, len(examples), step * batch, batch))


def micro(batch: dict[str, np.ndarray], accumulate: int) -> dict[str, np.ndarray]:
    """[B, ...] -> [accumulate, B / accumulate, ...] (micro-batches for gradient accumulation)."""
    b = batch["inputs"].shape[0]
    if b % accumulate:
        raise ValueError(f"batch size {b} is not divisible by accumulate={accumulate}")
    return {k: v.reshape(accumulate, b // accumulate, *v.shape[1:]) for k, v in batch.items()}


def eval_batches(examples: Examples, batch: int) -> list[np.ndarray]:
    """Index arrays covering every example once, in order (the last one padded with -1)."""
    n = len(examples)
    out = []
    for start in range(0, n, batch):
        idx = np.full(batch, -1, np.int64)
        chunk = np.arange(start, min(start + batch, n))
        idx[: len(chunk)] = chunk
        out.append(idx)
    return out


def take_padded(examples: Examples, idx: np.ndarray) -> dict[str, np.ndarray]:
    """`take` where index -1 means a filler row with zero weights."""
    valid = idx >= 0
    batch = examples.take(np.where(valid, idx, 0))
    batch["weights"] = batch["weights"] * valid[:, None]
    return batch


def steps_per_epoch(n: int, batch: int) -> int:
    """Updates for one pass over n examples (the last batch wraps into the next epoch)."""
    return batching.steps_per_epoch([n], batch)
