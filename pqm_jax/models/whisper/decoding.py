"""Jitted greedy and beam-search decoding of Whisper with a preallocated KV cache.

One `jax.jit` call transcribes a batch of padded 30 s windows: the encoder runs once, the
cross-attention keys/values once, the prompt in one prefill step, then the token loop is a
`lax.while_loop` over single-token cached steps. Shapes depend only on (batch, options), so a new
batch of the same size (any mix of speakers' adapters) reuses the compiled program.

Token rules follow Hugging Face `generate` for Whisper. Without timestamps the prompt is
`<|startoftranscript|>` (+ `<|en|><|transcribe|>` on multilingual models) + `<|notimestamps|>`;
`suppress` ids are banned at every step and `begin_suppress` ids (blank, end-of-text) at the
first generated step; a finished row keeps emitting end-of-text. Scores are log-probabilities
normalised over the whole vocabulary before the bans (HF's order; openai-whisper bans first),
so greedy and beam-search tokens both equal HF's. With `timestamp_begin` set (a prompt without
`<|notimestamps|>`), `timestamps.bans` adds Whisper's timestamp rules (HF `return_timestamps`);
`temperature` > 0 samples instead of taking the best token (the fallback of long-form decoding).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import model as whisper
from pqm_jax.models.whisper import timestamps as ts_rules
from pqm_jax.quant import base
from pqm_jax.quant.native import matvec


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How to decode (static under jit: hashable, one compilation per distinct value).

    Attributes:
      prompt: the forced decoder prompt, e.g. (sot, no_timestamps) for English-only models or
        (sot, lang, transcribe, no_timestamps) for multilingual ones.
      eot: end-of-text id (also the padding after a row finished).
      suppress: ids never generated (CT2 `suppress_ids`, HF `suppress_tokens`).
      begin_suppress: ids banned at the first generated step (blank and end-of-text).
      max_new_tokens: generated-token cap (end-of-text included); None = max_target_positions
        minus the prompt length (448 - prompt, as HF).
      beam_size: 1 = greedy.
      length_penalty: beam ranking score = sum_logprob / n ** length_penalty, n = generated
        tokens including end-of-text (HF's convention; openai-whisper's default is the same with
        exponent 1). 0 ranks by the plain sum of log-probabilities.
      no_repeat_ngram_size: n > 0 bans any token that would repeat an n-gram already generated in
        that row (HF's rule). Off (0) by default.
      max_repeats: R > 0 ends a row (forces end-of-text next) once its generated tail is some
        block of 1..`max_period` tokens repeated R + 1 times in a row; the repeats stay in the
        output. A guard against the repetition loops of quantised models. Off (0) by default,
        so that greedy output equals HF `generate` exactly.
      max_period: the longest repeated block `max_repeats` looks for.
      dtype: compute dtype name ("float32" or "bfloat16").
      encoder_dtype: the encoder's compute dtype when it differs from `dtype` (None: the same):
        "bfloat16" with a float32 `dtype` runs the encoder's large products in bfloat16 with
        float32 accumulation (AMX on CPUs that have it) and keeps the token loop in float32,
        where the native kernels run. The cross keys/values (products of the encoder's output,
        once per window) are computed in that dtype too, then cast to `dtype` for the loop.
      predequantize: dequantise quantised weights once per call, before the token loop (else
        every step dequantises every weight it touches).
      quantized_steps: keep 4-bit (NF4/FP4) weights quantised inside the token loop, where the
        native CPU kernel multiplies the step's rows (at most `matvec.DECODE_ROWS`) by their codes
        (`quant.native.matvec`): it reads an eighth of the float32 bytes. The encoder and cross
        keys/values still use the dequantised weights. Tokens may differ from the dequantised
        loop's where two candidates are near-tied (the kernel sums in another order). No effect
        without the kernel, for other schemes, off float32, or for more rows.
      native_steps: multiply the prefill's and the token loop's few rows by the cached keys and
        values and by a float32 tied embedding with the native CPU kernel (`quant.native.rows`),
        which reads each of them once where XLA's dot copies it first. Tokens may differ from
        XLA's products where two candidates are near-tied (the kernel sums in another order).
        No effect without the kernel, off a CPU host with one device, or off float32.
      timestamp_begin: id of `<|0.00|>`: decode with timestamp tokens under Whisper's rules
        (`timestamps.bans`); the prompt must then leave out `<|notimestamps|>`. None = text only.
      max_initial_timestamp: with timestamps, the latest first timestamp (index; openai-whisper:
        50 = 1.0 s). None = any.
      temperature: 0 = the most likely token (greedy / beam); > 0 samples from the softmax of
        log-probabilities / temperature (greedy only; `generate` then needs a key).
      no_speech: id of `<|nospeech|>` (`<|nocaptions|>`): `Result.no_speech` is its probability
        at the start-of-transcript position (openai-whisper's no_speech_prob). None = zeros.
    """

    prompt: tuple[int, ...]
    eot: int
    suppress: tuple[int, ...] = ()
    begin_suppress: tuple[int, ...] = ()
    max_new_tokens: int | None = None
    beam_size: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_repeats: int = 0
    max_period: int = 8
    dtype: str = "float32"
    encoder_dtype: str | None = None
    predequantize: bool = True
    quantized_steps: bool = True
    native_steps: bool = True
    timestamp_begin: int | None = None
    max_initial_timestamp: int | None = None
    temperature: float = 0.0
    no_speech: int | None = None

    def __post_init__(self):
        if not self.prompt:
            raise ValueError("DecodeOptions.prompt must hold at least <|startoftranscript|>")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature > 0 and self.beam_size > 1:
            raise ValueError("temperature > 0 samples one hypothesis: use beam_size 1")
        if self.encoder_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(
                f"encoder_dtype must be float32, bfloat16 or None, got {self.encoder_dtype!r}"
            )
        if self.timestamp_begin is not None and self.timestamp_begin - 1 in self.prompt:
            raise ValueError("a prompt with <|notimestamps|> cannot decode timestamps")
        # Lists from a JSON config would make the options unhashable; normalise to tuples.
        for name in ("prompt", "suppress", "begin_suppress"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))

    def new_tokens(self, config: whisper.WhisperConfig) -> int:
        """The generated-token budget for `config` (prompt + budget <= max_target_positions)."""
        room = config.max_target_positions - len(self.prompt)
        if room < 1:
            raise ValueError(f"prompt of {len(self.prompt)} tokens leaves no room to decode")
        return room if self.max_new_tokens is None else min(self.max_new_tokens, room)


@struct.dataclass
class Result:
    """Decoded hypotheses of a batch.

    tokens: [B, max_new] int32, generated ids after the prompt, end-of-text padded.
    lengths: [B] int32, tokens before the first end-of-text (the text tokens).
    scores: [B] float32, sum of log-probabilities of the generated tokens, end-of-text included.
    no_speech: [B] float32, probability of `<|nospeech|>` after start-of-transcript (0 when
      `DecodeOptions.no_speech` is None).
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    no_speech: jax.Array


def _ban(mask_ids: tuple[int, ...], vocab: int) -> jax.Array:
    """[vocab] bool, True at `mask_ids` (ids outside the vocabulary are ignored)."""
    ids = [i for i in mask_ids if 0 <= i < vocab]
    return jnp.zeros((vocab,), bool).at[jnp.asarray(ids, jnp.int32)].set(True) if ids else None


def _ngram_bans(hist: jax.Array, t: jax.Array, n: int, vocab: int) -> jax.Array:
    """[N, vocab] bool: tokens that would complete an n-gram already in hist[:, :t] [N, L]."""
    rows, length = hist.shape
    if length < n:
        return jnp.zeros((rows, vocab), bool)
    starts = length - n + 1
    # The last n - 1 tokens of each row (clamped at the start; masked below when t < n - 1).
    tail = jax.lax.dynamic_slice_in_dim(hist, jnp.maximum(t - (n - 1), 0), n - 1, axis=1)
    match = jnp.ones((rows, starts), bool)
    for j in range(n - 1):
        match &= hist[:, j : j + starts] == tail[:, j : j + 1]
    # Only n-grams fully generated before step t: start j with j + n - 1 < t.
    match &= (jnp.arange(starts) + n - 1 < t)[None] & (t >= n - 1)
    nxt = hist[:, n - 1 :]
    count = jnp.zeros((rows, vocab), jnp.int32)
    count = count.at[jnp.arange(rows)[:, None], nxt].add(match.astype(jnp.int32))
    return count > 0


def _looping(hist: jax.Array, t: jax.Array, repeats: int, max_period: int) -> jax.Array:
    """[N] bool: hist[:, :t] ends with a block of period p <= max_period, repeats + 1 times."""
    rows, length = hist.shape
    out = jnp.zeros((rows,), bool)
    pos = jnp.arange(length)
    for p in range(1, max_period + 1):
        if p * (repeats + 1) > length:
            break
        same = jnp.concatenate([jnp.zeros((rows, p), bool), hist[:, p:] == hist[:, :-p]], axis=1)
        window = (pos >= t - p * repeats) & (pos < t)
        out |= jnp.all(same | ~window[None], axis=1) & (t >= p * (repeats + 1))
    return out


def _logprobs(logits: jax.Array, hist: jax.Array, t: jax.Array, opts: DecodeOptions) -> jax.Array:
    """Log-probabilities [N, V] of the next token after the suppression and repetition rules."""
    rows, vocab = logits.shape
    neg = jnp.float32(-jnp.inf)
    banned = jnp.zeros((rows, vocab), bool)
    always = _ban(opts.suppress, vocab)
    if always is not None:
        banned |= always[None]
    begin = _ban(opts.begin_suppress, vocab)
    if begin is not None:
        banned |= begin[None] & (t == 0)
    if opts.no_repeat_ngram_size > 0:
        banned |= _ngram_bans(hist, t, opts.no_repeat_ngram_size, vocab)
    if opts.timestamp_begin is not None:
        banned = ts_rules.bans(
            logits,
            banned,
            hist,
            t,
            timestamp_begin=opts.timestamp_begin,
            eot=opts.eot,
            max_initial=opts.max_initial_timestamp,
        )
    # HF's order: normalise over the whole vocabulary, then ban (openai-whisper bans first). It
    # only matters for beam search: scores of banned-mass-heavy beams come out lower.
    logp = jnp.where(banned, neg, jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    if opts.max_repeats > 0:
        stop = _looping(hist, t, opts.max_repeats, opts.max_period)
        only_eot = jnp.where(jnp.arange(vocab) == opts.eot, 0.0, neg)
        logp = jnp.where(stop[:, None], only_eot[None], logp)
    return logp


def _argmax(x: jax.Array) -> jax.Array:
    """jnp.argmax(x, axis=-1) (the first largest; a NaN counts as the largest, as there) as two
    vectorised reductions: the largest value, then the smallest index holding it. XLA's CPU
    backend runs argmax's index-carrying reduce one element at a time: for 8 rows of tiny.en's
    51,864 log-probabilities 1.5 ms against 0.3 ms (2-core AMD EPYC), about 1 ms of every greedy
    step."""
    top = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == top) | jnp.isnan(x)
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def _prepare(params: Any, dtype: Any, predequantize: bool) -> Any:
    """Params for the loop: quantised leaves dequantised (once) and floats cast to `dtype`."""
    if not predequantize:
        return params

    def leaf(w):
        if base.is_quantized(w):
            return w.dequantize(dtype)
        return w.astype(dtype) if jnp.issubdtype(w.dtype, jnp.floating) else w

    return jax.tree.map(leaf, params, is_leaf=base.is_quantized)


def _step_params(params: Any, prepared: Any, opts: DecodeOptions, dtype: Any, rows: int) -> Any:
    """Params of the token loop: `prepared` (from `_prepare`), except that with
    `opts.quantized_steps` the 4-bit weights of `params` the native kernel takes stay quantised
    (double-quantised absmax decoded once, outside the loop)."""
    if not (opts.quantized_steps and dtype == jnp.float32 and rows <= matvec.DECODE_ROWS):
        return prepared

    def leaf(w, ready):
        return matvec.stream(w) if matvec.takes(w) else ready

    return jax.tree.map(leaf, params, prepared, is_leaf=base.is_quantized)


def _step(config: whisper.WhisperConfig, lora: Any, dtype: Any, opts: DecodeOptions):
    """The loop's cached step: `step(params, tokens, cache, cross) -> (logits, cache)`."""
    return functools.partial(
        whisper.decode_step, config=config, lora=lora, dtype=dtype, native=opts.native_steps
    )


def _lengths(tokens: jax.Array, eot: int) -> jax.Array:
    is_eot = tokens == eot
    return jnp.where(is_eot.any(1), jnp.argmax(is_eot, axis=1), tokens.shape[1]).astype(jnp.int32)


def _start(params, mel, lora, config, opts, dtype, rows):
    """Encoder, cross K/V, and the prompt prefill: (params for the token loop of `rows` rows,
    cross, cache, last logits [B, V], no-speech probability [B]). The prefill already uses the
    loop's params: with a prompt of few rows too, no dense copy of the decoder's 4-bit weights
    (the 51,864 x d embedding among them) is formed at all."""
    ready = _prepare(params, dtype, opts.predequantize)
    steps = _step_params(params, ready, opts, dtype, rows)
    enc_dtype = jnp.dtype(opts.encoder_dtype or dtype)
    if enc_dtype == dtype:
        enc = whisper.encode(ready, mel, config=config, lora=lora, dtype=dtype)
        cross = whisper.cross_kv(ready, enc, config=config, lora=lora)
    else:  # the encoder and the cross keys/values (per window, not per token) in enc_dtype
        low = _prepare(params, enc_dtype, opts.predequantize)  # what they do not read is dropped
        enc = whisper.encode(low, mel, config=config, lora=lora, dtype=enc_dtype)
        cross = whisper.cross_kv(low, enc, config=config, lora=lora)
        cross = jax.tree.map(lambda a: a.astype(dtype), cross)
    batch = mel.shape[0]
    prompt = jnp.tile(jnp.asarray(opts.prompt, jnp.int32)[None], (batch, 1))
    cache = whisper.init_cache(config, batch, len(opts.prompt) + opts.new_tokens(config), dtype)
    logits, cache = whisper.decode_step(
        steps, prompt, cache, cross, config=config, lora=lora, dtype=dtype, native=opts.native_steps
    )
    if opts.no_speech is None:
        no_speech = jnp.zeros((batch,), jnp.float32)
    else:  # openai-whisper: at the start-of-transcript position, over the whole vocabulary
        no_speech = jax.nn.softmax(logits[:, 0].astype(jnp.float32), axis=-1)[:, opts.no_speech]
    return steps, cross, cache, logits[:, -1], no_speech


def _phase_sizes(batch: int) -> list[int]:
    """Row counts of the greedy loop's phases: the batch, then a quarter of it at a time down to
    one row. A cached step costs about as much for 1 row as for 2 (reading the weights and the
    51,864 x d output embedding dominates: 9 against 17 ms for 1 and 8 rows of tiny.en on 2 CPU
    cores), so quartering keeps most of the saving with fewer compiled loops than halving."""
    sizes = [batch]
    while sizes[-1] > 1:
        sizes.append(max(1, sizes[-1] // 4))
    return sizes


def _take_rows(tree: Any, keep: jax.Array) -> Any:
    """Rows `keep` of every array in `tree` (per-row state, cross K/V)."""
    return jax.tree.map(lambda x: x[keep], tree)


def _take_bank(lora: Any, keep: jax.Array) -> Any:
    """Rows `keep` of a per-example adapter bank (a shared adapter tree is left as it is)."""

    def take(ad):
        if isinstance(ad, lora_lib.LoraWeights) and ad.a.ndim == 3:
            return ad.replace(a=ad.a[keep], b=ad.b[keep])
        return ad

    return jax.tree.map(take, lora, is_leaf=lambda x: isinstance(x, lora_lib.LoraWeights))


def _greedy(
    params, mel, lora, config: whisper.WhisperConfig, opts: DecodeOptions, key, temperature
) -> Result:
    """Greedy (or sampled) decoding in phases of shrinking batch: when at most a quarter of a phase's
    rows are still running, the running rows (cache, cross K/V, adapters, history) are gathered
    into a batch that size and the loop goes on there. Finished rows stop costing, as in
    CTranslate2, while every shape stays static (one compiled loop per phase size). Each row's
    tokens are those of the full-batch loop: rows never interact, and sampling keys are per row."""
    dtype = jnp.dtype(opts.dtype)
    batch, steps = mel.shape[0], opts.new_tokens(config)
    params, cross, cache, logits, no_speech = _start(params, mel, lora, config, opts, dtype, batch)

    def body_for(lora_rows, cross_rows):
        step = _step(config, lora_rows, dtype, opts)

        def body(s):
            t = s["t"]
            logp = _logprobs(s["logits"], s["hist"], t, opts)
            if opts.temperature > 0:
                keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(key, t), s["row"])
                pick = jax.vmap(jax.random.categorical)(keys, logp / temperature)
            else:
                pick = _argmax(logp)
            tok = jnp.where(s["done"], opts.eot, pick.astype(jnp.int32))
            gain = jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]
            logits, cache = step(params, tok[:, None], s["cache"], cross_rows)
            hist = jax.lax.dynamic_update_slice_in_dim(s["hist"], tok[:, None], t, axis=1)
            return s | {
                "t": t + 1,
                "hist": hist,
                "score": s["score"] + jnp.where(s["done"], 0.0, gain),
                "done": s["done"] | (tok == opts.eot),
                "logits": logits[:, -1],
                "cache": cache,
            }

        return body

    state = {
        "t": jnp.zeros((), jnp.int32),
        "row": jnp.arange(batch, dtype=jnp.int32),
        "hist": jnp.full((batch, steps), opts.eot, jnp.int32),
        "score": jnp.zeros((batch,), jnp.float32),
        "done": jnp.zeros((batch,), bool),
        "logits": logits,
        "cache": cache,
    }
    out_hist, out_score = state["hist"], state["score"]
    sizes = _phase_sizes(batch)
    for i, size in enumerate(sizes):
        if i:  # the running rows first (at most `size` of them), then finished ones to fill
            keep = jnp.argsort(state["done"], stable=True)[:size]
            per_row = {k: v for k, v in state.items() if k not in ("t", "cache")}
            state = state | _take_rows(per_row, keep)
            state["cache"] = state["cache"].map_rows(lambda x, keep=keep: x[keep])
            cross = _take_rows(cross, keep)
            lora = _take_bank(lora, keep)
        floor = sizes[i + 1] if i + 1 < len(sizes) else 0

        def cond(s, floor=floor):
            running = jnp.sum(~s["done"])
            return (s["t"] < steps) & (running > floor)

        state = jax.lax.while_loop(cond, body_for(lora, cross), state)
        out_hist = out_hist.at[state["row"]].set(state["hist"])
        out_score = out_score.at[state["row"]].set(state["score"])
    lengths = _lengths(out_hist, opts.eot)
    return Result(tokens=out_hist, lengths=lengths, scores=out_score, no_speech=no_speech)


def _repeat_bank(lora: Any, n: int) -> Any:
    """Per-example adapters [B, ...] -> [B * n, ...] (each utterance's adapter for its n beams)."""

    def rep(ad):
        if isinstance(ad, lora_lib.LoraWeights) and ad.a.ndim == 3:
            return ad.replace(a=jnp.repeat(ad.a, n, axis=0), b=jnp.repeat(ad.b, n, axis=0))
        return ad

    return jax.tree.map(rep, lora, is_leaf=lambda x: isinstance(x, lora_lib.LoraWeights))


def _beam(params, mel, lora, config: whisper.WhisperConfig, opts: DecodeOptions) -> Result:
    """Beam search, HF-style: 2k candidates a step, end-of-text candidates ranked < k join a pool
    of k finished hypotheses (ranked by the length-penalised score), the best k others go on. An
    utterance is done when its pool is full and its best running beam, penalised at the current
    length, cannot beat the pool's worst; at the end, beams still running join the pool."""
    dtype = jnp.dtype(opts.dtype)
    k, steps, eot = opts.beam_size, opts.new_tokens(config), opts.eot
    batch = mel.shape[0]
    rows = batch * k
    params, cross, cache, logits, no_speech = _start(params, mel, lora, config, opts, dtype, rows)
    lora_rows = _repeat_bank(lora, k)
    step = _step(config, lora_rows, dtype, opts)
    cache = cache.map_rows(lambda x: jnp.repeat(x, k, axis=0))
    neg = jnp.float32(-jnp.inf)

    def penalised(score, n):
        return score / jnp.power(n.astype(jnp.float32), opts.length_penalty)

    def pool_add(pool, cand_tokens, cand_raw, cand_ok, n):
        """Merges candidates [B, c, ...] into the pool of k best finished hypotheses."""
        cand_score = jnp.where(cand_ok, penalised(cand_raw, n), neg)
        scores = jnp.concatenate([pool["score"], cand_score], axis=1)
        best, idx = jax.lax.top_k(scores, k)
        pick = lambda a, b: jnp.take_along_axis(
            jnp.concatenate([a, b], axis=1), idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1
        )
        return {
            "score": best,
            "raw": pick(pool["raw"], cand_raw),
            "tokens": pick(pool["tokens"], cand_tokens),
        }

    def cond(s):
        return (s["t"] < steps) & ~jnp.all(s["done"])

    def body(s):
        t = s["t"]
        hist = s["hist"]  # [B, k, steps]
        logp = _logprobs(s["logits"], hist.reshape(rows, steps), t, opts)
        cand = (s["score"].reshape(rows, 1) + logp).reshape(batch, -1)
        top, flat = jax.lax.top_k(cand, 2 * k)  # [B, 2k]
        src, tok = flat // logp.shape[1], (flat % logp.shape[1]).astype(jnp.int32)
        is_eot = tok == eot
        # Finished candidates: hist already holds end-of-text from position t on.
        cand_hist = jnp.take_along_axis(hist, src[..., None], axis=1)
        ok = is_eot & (jnp.arange(2 * k) < k)[None] & ~s["done"][:, None]
        pool = pool_add(s["pool"], cand_hist, top, ok, t + 1)
        # Running beams: the k best candidates that are not end-of-text.
        run, sel = jax.lax.top_k(jnp.where(is_eot, neg, top), k)
        beam_src = jnp.take_along_axis(src, sel, axis=1)
        beam_tok = jnp.take_along_axis(tok, sel, axis=1)
        new_hist = jnp.take_along_axis(hist, beam_src[..., None], axis=1)
        new_hist = jax.lax.dynamic_update_slice_in_dim(new_hist, beam_tok[..., None], t, axis=2)
        order = (jnp.arange(batch)[:, None] * k + beam_src).reshape(rows)
        cache = s["cache"]
        cache = cache.map_rows(lambda x: x[order])
        logits, cache = step(params, beam_tok.reshape(rows, 1), cache, cross)
        full = pool["score"][:, -1] > neg
        hopeless = penalised(run[:, 0], t + 1) <= pool["score"][:, -1]
        return {
            "t": t + 1,
            "hist": new_hist,
            "score": run,
            "pool": pool,
            "done": s["done"] | (full & hopeless),
            "logits": logits[:, -1],
            "cache": cache,
        }

    init_score = jnp.where(jnp.arange(k) == 0, 0.0, neg)  # all beams start equal: expand one
    state = {
        "t": jnp.zeros((), jnp.int32),
        "hist": jnp.full((batch, k, steps), eot, jnp.int32),
        "score": jnp.tile(init_score[None], (batch, 1)),
        "pool": {
            "score": jnp.full((batch, k), neg),
            "raw": jnp.full((batch, k), neg),
            "tokens": jnp.full((batch, k, steps), eot, jnp.int32),
        },
        "done": jnp.zeros((batch,), bool),
        "logits": jnp.repeat(logits, k, axis=0),
        "cache": cache,
    }
    s = jax.lax.while_loop(cond, body, state)
    # Utterances not done: their running beams compete with the pool at their current length.
    live = ~s["done"][:, None] & (s["score"] > neg)
    pool = pool_add(s["pool"], s["hist"], s["score"], live, jnp.maximum(s["t"], 1))
    tokens = pool["tokens"][:, 0]
    lengths = _lengths(tokens, eot)
    return Result(tokens=tokens, lengths=lengths, scores=pool["raw"][:, 0], no_speech=no_speech)


def _generate(params, mel, lora, key, temperature, config, options):
    if options.beam_size == 1:
        return _greedy(params, mel, lora, config, options, key, temperature)
    return _beam(params, mel, lora, config, options)


_generate_jit = jax.jit(_generate, static_argnames=("config", "options"))


def generate(
    params: Any,
    mel: jax.Array,
    *,
    config: whisper.WhisperConfig,
    options: DecodeOptions,
    lora: Any = None,
    key: jax.Array | None = None,
) -> Result:
    """Transcribes a batch of 30 s windows (jitted; compiled once per batch size and options).

    Args:
      params: Whisper params (any kernels may be quantised).
      mel: [B, n_mels, 3000] log-mel features.
      config: architecture (static).
      options: decoding rules (static).
      lora: optional adapters: one tree for the whole batch, or a per-example bank whose arrays
        have a leading [B] axis (`lora.take(bank, speaker_ids)`), so one batch mixes speakers.
      key: PRNG key for `options.temperature` > 0 (required then; ignored otherwise).

    Returns:
      `Result` with tokens [B, max_new] (beam search: the best finished hypothesis).
    """
    if options.temperature > 0 and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key: generate(..., key=...)")
    if key is None:
        key = jax.random.key(0)  # unused by argmax decoding; one argument shape for the cache
    # Every temperature > 0 shares one compilation: the value is an argument, not an option.
    temperature = jnp.float32(max(options.temperature, 1e-6))
    static = dataclasses.replace(options, temperature=1.0 if options.temperature > 0 else 0.0)
    return _generate_jit(
        params, jnp.asarray(mel), lora, key, temperature, config=config, options=static
    )


def greedy(
    params: Any,
    mel: jax.Array,
    *,
    config: whisper.WhisperConfig,
    options: DecodeOptions,
    lora: Any = None,
) -> Result:
    """`generate` with beam_size 1."""
    return generate(
        params, mel, config=config, options=dataclasses.replace(options, beam_size=1), lora=lora
    )


def beam_search(
    params: Any,
    mel: jax.Array,
    *,
    config: whisper.WhisperConfig,
    options: DecodeOptions,
    beam_size: int,
    lora: Any = None,
) -> Result:
    """`generate` with `beam_size` beams."""
    opts = dataclasses.replace(options, beam_size=beam_size)
    return generate(params, mel, config=config, options=opts, lora=lora)
