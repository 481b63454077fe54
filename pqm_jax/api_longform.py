"""Long-form transcription for `api.WhisperModel.transcribe_long`: audio of any length into timed
segments (`models.whisper.longform`), optionally with word timestamps from the alignment heads'
cross-attention (`models.whisper.alignment`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from pqm_jax import api_inputs
from pqm_jax.data import audio as audio_lib
from pqm_jax.data import features
from pqm_jax.models.whisper import alignment, decoding, longform
from pqm_jax.models.whisper import model as whisper

if TYPE_CHECKING:
    from pqm_jax.api import WhisperModel

AudioInput = api_inputs.AudioInput


def transcribe_long(
    model: WhisperModel,
    audio: AudioInput | Sequence[AudioInput],
    *,
    mode: str = "sequential",
    beam_size: int = 1,
    batch_size: int = 8,
    speakers: Sequence[int | str] | None = None,
    adapters: Any = None,
    language: str | None = "en",
    sample_rate: int = audio_lib.TARGET_RATE,
    temperatures: Sequence[float] = (0.0,),
    compression_ratio_threshold: float | None = None,
    logprob_threshold: float | None = None,
    no_speech_threshold: float | None = None,
    max_initial_timestamp: int | None = None,
    chunk_s: float | None = None,
    stride_s: float = 5.0,
    seed: int = 0,
    word_timestamps: bool = False,
    progress: bool | None = None,
    **decode_kwargs: Any,
) -> list[longform.Transcript]:
    """Transcribes audio of any length into timed segments (`longform`).

    Args:
      audio, beam_size, batch_size, speakers, adapters, language, sample_rate: as in
        `transcribe` (no 30 s limit here).
      mode: "sequential" (openai-whisper's seek-by-timestamp; transformers' long-form
        `generate`) or "chunked" (overlapping chunks decoded as one batch, the pipeline's
        way).
      temperatures, compression_ratio_threshold, logprob_threshold, no_speech_threshold:
        the fallback (`longform.Options`); the defaults decode once, greedily, like
        transformers; openai-whisper's CLI uses (0, 0.2, ..., 1.0), 2.4, -1.0 and 0.6.
      max_initial_timestamp: latest first timestamp (index; openai-whisper 50 = 1 s).
      chunk_s, stride_s: chunked mode: chunk length (default: the model's window) and the
        overlap with each neighbour.
      seed: sampling key of the fallback.
      word_timestamps: also time each word (`alignment`, sequential mode): the model's
        `alignment_heads` (from its config; else every head of the last half of the
        decoder layers, openai-whisper's default).
      progress: tqdm bar over the audio (default: more than one window of audio).

    Returns:
      one `longform.Transcript` per input (`.text`, `.segments` with start/end seconds).
    """
    items = api_inputs.as_items(audio)
    if not items:
        return []
    if mode not in ("sequential", "chunked"):
        raise ValueError(f"mode must be 'sequential' or 'chunked', got {mode!r}")
    clips = [api_inputs.load_audio(a, i, sample_rate, limit=False) for i, a in enumerate(items)]
    bank, rows = api_inputs.resolve_adapters(adapters, speakers, len(clips))
    base = model.timestamp_options(
        beam_size=beam_size,
        language=language,
        max_initial_timestamp=max_initial_timestamp,
        **decode_kwargs,
    )
    opts = longform.Options(
        temperatures=tuple(float(t) for t in temperatures),
        compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold,
        no_speech_threshold=no_speech_threshold,
        batch_size=min(batch_size, 1 << (len(clips) - 1).bit_length())
        if mode == "sequential"
        else batch_size,
        seed=seed,
    )

    def decode(mel, who, options, key):
        lora = api_inputs.batch_lora(bank, rows, adapters, list(who))
        return decoding.generate(
            model.params, mel, config=model.config, options=options, lora=lora, key=key
        )

    window = model.config.n_frames
    total = sum(len(c) for c in clips) // features.HOP
    show = (total > window) if progress is None else progress
    if mode == "chunked":
        if word_timestamps:
            raise ValueError("word_timestamps needs mode='sequential'")
        return longform.chunked(
            decode,
            clips,
            features=model.features,
            base=base,
            opts=opts,
            tok_text=model.tokenizer.decode,
            chunk_s=window * features.HOP / audio_lib.TARGET_RATE if chunk_s is None else chunk_s,
            stride_s=stride_s,
        )
    mels = [features.log_mel_windows(c[None], model.config.n_mels)[0] for c in clips]
    bar = None
    if show:
        import tqdm  # lazy

        bar = tqdm.tqdm(total=total, desc="transcribing", unit="frame", unit_scale=True)
    try:
        return longform.sequential(
            decode,
            mels,
            base=base,
            opts=opts,
            tok_text=model.tokenizer.decode,
            progress=bar.update if bar is not None else None,
            window=window,
            align=_aligner(model, bank, rows, adapters, language) if word_timestamps else None,
            piece=model.tokenizer.piece,
        )
    finally:
        if bar is not None:
            bar.close()


def _aligner(model: WhisperModel, bank, rows, adapters, language) -> longform.Align:
    """align(window, file, text ids, frames) -> token start times, one jitted pass a call."""
    tok = model.tokenizer
    prompt = list(tok.prompt(language if tok.multilingual else None))  # <|notimestamps|>
    heads = np.asarray(model.heads_for_alignment())

    def align(mel, file, ids, frames):
        seq = prompt + list(ids) + [tok.special.eot]
        size = min(-(-len(seq) // 32) * 32, model.config.max_target_positions)
        if len(seq) > size:
            raise ValueError(f"{len(ids)} text tokens do not fit the decoder's positions")
        padded = np.full((1, size), tok.special.eot, np.int32)
        padded[0, : len(seq)] = seq
        lora = api_inputs.batch_lora(bank, rows, adapters, [file])
        weights = np.asarray(
            _cross_attention_jit(
                model.params, mel[None], jnp.asarray(padded), lora, config=model.config
            )
        )  # [L, 1, H, T, S]
        picked = weights[heads[:, 0], 0, heads[:, 1]]  # [A, T, S]
        picked = picked[:, len(prompt) - 1 : len(seq) - 1]  # rows predicting ids and eot
        return alignment.token_starts(picked, frames)

    return align


@functools.partial(jax.jit, static_argnames=("config",))
def _cross_attention_jit(params, mel, tokens, lora, *, config):
    enc = whisper.encode(params, mel, config=config, lora=lora)
    return whisper.cross_attention(params, tokens, enc, config=config, lora=lora)
