"""What `api` reads from its callers: audio (paths or arrays, checked and resampled to 16 kHz
mono) and adapters (one tree, a bank, a dict of speakers or a paged bank), resolved per utterance.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pqm_jax
from pqm_jax import lora as lora_lib
from pqm_jax.data import audio as audio_lib
from pqm_jax.data import features

AudioInput = np.ndarray | str | os.PathLike


def as_items(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    """One utterance (a path, or an array of samples: mono [samples] or soundfile's
    [samples, channels]) as a list of one; several (a list of those) as a list."""
    single = isinstance(audio, str | os.PathLike) or isinstance(audio, np.ndarray | jax.Array)
    return [audio] if single else list(audio)


def _is_lora(x: Any) -> bool:
    return isinstance(x, lora_lib.LoraWeights)


def is_bank(adapters: Any) -> bool:
    leaves = jax.tree.leaves(adapters, is_leaf=_is_lora)
    if not leaves or not all(_is_lora(x) for x in leaves):
        raise TypeError("adapters must be a LoRA tree (LoraWeights leaves), e.g. lora.init(...)")
    dims = {x.a.ndim for x in leaves}
    if dims not in ({2}, {3}):
        raise ValueError(f"adapters mix single and banked LoRA weights (a.ndim {sorted(dims)})")
    return dims == {3}


def batch_lora(bank: Any, rows: list, adapters: Any, who: list[int]) -> Any:
    """The adapters of the utterances `who` (indices into the inputs): a paged bank's rows read
    from disk, a bank's rows taken, one tree as is, or None."""
    if hasattr(bank, "gather"):  # only this batch's speakers are read
        return jax.tree.map(jnp.asarray, bank.gather([rows[i] for i in who]))
    if bank is not None:
        ids = np.asarray([rows[i] for i in who], np.int32)
        return lora_lib.take(bank, jnp.asarray(ids))
    return adapters


def progress_bar(batches: list, progress: bool | None, n: int):
    if progress is None:
        progress = len(batches) > 1
    if not progress:
        return batches
    import tqdm  # lazy

    return tqdm.tqdm(batches, desc=f"transcribing {n} utterances", unit="batch")


def load_audio(a: AudioInput, index: int, sample_rate: int, *, limit: bool = True) -> np.ndarray:
    """One utterance -> mono float32 16 kHz, at most 30 s when `limit` (warned when cut)."""
    if isinstance(a, str | os.PathLike):
        path = pathlib.Path(a)
        if path.is_dir():
            raise IsADirectoryError(
                f"audio {path} (utterance {index}) is a folder: pass its files, e.g. "
                f"sorted(pathlib.Path({str(path)!r}).glob('*.wav'))"
            )
        if not path.is_file():
            raise FileNotFoundError(f"audio file {path} (utterance {index}) does not exist")
        try:
            data, rate = audio_lib.decode(path)
        except Exception as e:  # soundfile names neither the file nor the fix
            raise ValueError(
                f"cannot decode audio file {path} (utterance {index}): {e}; is it truncated "
                "or in a format libsndfile does not read (WAV, FLAC, OGG, MP3)?"
            ) from None
        clip = audio_lib.resample(data.mean(axis=1), rate)
        name = str(path)
    elif isinstance(a, np.ndarray | jax.Array):
        clip = np.asarray(a)
        name = f"utterance {index}"
        clip = mono(clip, name)
        if not np.issubdtype(clip.dtype, np.floating):
            raise ValueError(
                f"{name} has dtype {clip.dtype}: expected float audio in [-1, 1] (int16 PCM: "
                "divide by 32768)"
            )
        clip = audio_lib.resample(clip.astype(np.float32), sample_rate)
    else:
        raise TypeError(f"utterance {index}: expected a path or a numpy array, got {type(a)}")
    if clip.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(clip).all():
        raise ValueError(f"{name} holds NaN or inf samples")
    if limit and clip.size > features.N_SAMPLES:
        warnings.warn(
            f"{name} is {clip.size / audio_lib.TARGET_RATE:.1f} s long; Whisper decodes one 30 s "
            "window, so only its first 30 s are transcribed (transcribe_long decodes it all)",
            pqm_jax.PQMWarning,
            stacklevel=3,
        )
        clip = clip[: features.N_SAMPLES]
    return clip


MAX_CHANNELS = 8


def mono(clip: np.ndarray, name: str) -> np.ndarray:
    """[samples] as is; soundfile's [samples, channels] (at most 8 channels) averaged to mono with
    a warning; anything else refused (a list of 1-D arrays is several utterances)."""
    if clip.ndim == 1:
        return clip
    if clip.ndim == 2 and clip.shape[1] <= MAX_CHANNELS < clip.shape[0]:
        if clip.shape[1] > 1:
            warnings.warn(
                f"{name} has {clip.shape[1]} channels [samples, channels]: averaged to mono",
                pqm_jax.PQMWarning,
                stacklevel=4,
            )
        return clip.mean(axis=1)
    raise ValueError(
        f"{name} has shape {clip.shape}: expected mono audio [samples] or soundfile's "
        "[samples, channels]; for [channels, samples] pass x.T (or x.mean(axis=0)); for several "
        "utterances pass a list of 1-D arrays"
    )


def resolve_adapters(
    adapters: Any, speakers: Sequence[int | str] | None, n: int
) -> tuple[Any, list[int]]:
    """(bank or None, bank row per utterance); for a paged bank (anything with `gather`, e.g.
    `Results.paged_bank()`), (the bank, speaker name per utterance)."""
    if hasattr(adapters, "gather"):
        if speakers is None:
            raise ValueError("a paged bank needs `speakers` (one adapted speaker per utterance)")
        unknown = sorted({repr(s) for s in speakers if s not in adapters})
        if unknown:
            raise KeyError(f"speakers without adapters: {', '.join(unknown[:8])}")
        return adapters, list(speakers)
    if adapters is None:
        if speakers is not None:
            raise ValueError("speakers given without adapters")
        return None, []
    if isinstance(adapters, Mapping) and adapters and not is_lora_tree_dict(adapters):
        names = list(adapters)
        bank = lora_lib.stack([adapters[k] for k in names])
        if speakers is None:
            raise ValueError("a dict of adapters needs `speakers` (one key per utterance)")
        unknown = sorted({repr(s) for s in speakers if s not in adapters})
        if unknown:
            raise KeyError(f"speakers without adapters: {', '.join(unknown)}; known: {names}")
        rows = [names.index(s) for s in speakers]
    elif is_bank(adapters):
        bank = adapters
        size = jax.tree.leaves(bank)[0].shape[0]
        if speakers is None:
            raise ValueError(f"an adapter bank ({size} speakers) needs `speakers`")
        for s in speakers:
            if not isinstance(s, int | np.integer) or not 0 <= s < size:
                raise ValueError(f"speaker {s!r} is not a bank index in [0, {size})")
        rows = [int(s) for s in speakers]
    else:
        if speakers is not None:
            raise ValueError("one adapter tree applies to every utterance: drop `speakers`")
        return None, []
    if len(rows) != n:
        raise ValueError(f"{len(rows)} speakers for {n} utterances")
    return bank, rows


def is_lora_tree_dict(tree: Mapping) -> bool:
    """True for an adapter tree (keys 'encoder'/'decoder'), False for a dict of speakers."""
    return set(tree) <= {"encoder", "decoder"}
