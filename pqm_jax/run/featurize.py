"""Entries -> training examples: cached log-mel windows with token ids and their loss weights."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from pqm_jax.data import corpora
from pqm_jax.data.feature_store import DataWarning, FeatureStore
from pqm_jax.train import examples as ex


def encode_tokens(
    tokenizer, text: str, max_tokens: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(inputs, targets, weights), each [max_tokens], or None when the text does not fit.

    The sequence is prompt (`tokenizer.prompt()`) + text tokens (with Whisper's leading space)
    + end-of-text; targets are the sequence shifted by one; weights are 1 on targets that are
    text or end-of-text, 0 on the prompt and the padding (padded with end-of-text ids).
    """
    prompt = list(tokenizer.prompt())
    eot = tokenizer.special.eot
    seq = prompt + list(tokenizer.encode(text, leading_space=True)) + [eot]
    if len(seq) - 1 > max_tokens:
        return None
    inputs = np.full(max_tokens, eot, np.int32)
    targets = np.full(max_tokens, eot, np.int32)
    weights = np.zeros(max_tokens, np.float32)
    n = len(seq) - 1
    inputs[:n] = seq[:-1]
    targets[:n] = seq[1:]
    weights[len(prompt) - 1 : n] = 1.0
    return inputs, targets, weights


def examples(
    entries: Sequence[corpora.Entry],
    store: FeatureStore,
    tokenizer,
    *,
    max_tokens: int,
    in_memory: bool = True,
    progress: Callable | None = None,
) -> ex.Examples | None:
    """Examples of the usable entries (features computed/cached now); None if none is usable.

    Args:
      in_memory: stack every mel in memory; otherwise keep them on disk and load per batch.
      progress: optional wrapper of an iterable (e.g. tqdm) shown while featurising.
    """
    kept, rows, mels = [], [], []
    too_long = 0
    items = progress(entries) if progress else entries
    for entry in items:
        tokens = encode_tokens(tokenizer, entry.text, max_tokens)
        if tokens is None:
            too_long += 1
            continue
        mel = store.get(entry)
        if mel is None:
            continue
        kept.append(entry)
        rows.append(tokens)
        if in_memory:
            mels.append(mel)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(entries)} transcripts need more than max_tokens={max_tokens} "
            "decoder positions; left out (raise model.max_tokens to keep them)",
            DataWarning,
            stacklevel=2,
        )
    if not kept:
        return None
    inputs, targets, weights = (np.stack(x) for x in zip(*rows))
    return ex.Examples(
        ids=tuple(e.utt_id for e in kept),
        inputs=inputs,
        targets=targets,
        weights=weights,
        mel=np.stack(mels) if in_memory else None,
        load_mel=None if in_memory else store.loader(kept),
    )
