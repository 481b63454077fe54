"""Whisper's timestamp-token rules, jittable, for decoding with timestamps (long-form audio).

With timestamps the prompt has no `<|notimestamps|>` and the model writes
`<|t0|> text <|t1|><|t1'|> text <|t2|> ...`: a timestamp token `timestamp_begin + i` stands for
`0.02 * i` seconds into the 30 s window. The rules are openai-whisper's `ApplyTimestampRules`
(transformers' `WhisperTimeStampLogitsProcessor`), applied to every row at step `t`:

1. `<|notimestamps|>` is never generated;
2. timestamps come in pairs (segment end, next segment start), except just before end-of-text:
   after a pair the next token is text, after a single timestamp it is a timestamp or
   end-of-text;
3. timestamps never decrease (and a new pair cannot repeat the previous end);
4. the first generated token is a timestamp, at most `max_initial` (index) when given;
5. when the probability mass of all timestamp tokens exceeds that of the most likely text token,
   the next token is a timestamp.

Rule 5 compares sums of probabilities of the tokens not banned so far, so it does not depend on
how the scores are normalised: it matches both implementations whatever order the other bans
were applied in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bans(
    logits: jax.Array,
    banned: jax.Array,
    hist: jax.Array,
    t: jax.Array,
    *,
    timestamp_begin: int,
    eot: int,
    max_initial: int | None = None,
) -> jax.Array:
    """`banned` [N, V] widened by the timestamp rules at step `t`.

    Args:
      logits: [N, V] raw scores of the next token.
      banned: [N, V] bool, tokens already banned (suppressed ids, ...).
      hist: [N, L] generated tokens (valid before position `t`; the rest is end-of-text).
      t: scalar int, the step (0 = the first generated token).
      timestamp_begin: id of `<|0.00|>` (`<|notimestamps|>` is the id before it).
      eot: end-of-text id (text tokens are the ids below it).
      max_initial: the latest timestamp index allowed as the first token (None = any).

    Returns:
      [N, V] bool.
    """
    _, vocab = logits.shape
    ids = jnp.arange(vocab)
    is_ts = ids >= timestamp_begin
    banned = banned | (ids == timestamp_begin - 1)[None]  # rule 1
    length = hist.shape[1]
    last = jax.lax.dynamic_index_in_dim(hist, jnp.clip(t - 1, 0, length - 1), 1, keepdims=False)
    prev = jax.lax.dynamic_index_in_dim(hist, jnp.clip(t - 2, 0, length - 1), 1, keepdims=False)
    last_ts = (t >= 1) & (last >= timestamp_begin)
    prev_ts = (t < 2) | (prev >= timestamp_begin)
    pair = (last_ts & prev_ts)[:, None]
    single = (last_ts & ~prev_ts)[:, None]
    banned = banned | (pair & is_ts[None]) | (single & (ids < eot)[None])  # rule 2
    seen = (jnp.arange(length) < t)[None] & (hist >= timestamp_begin)
    newest = jnp.max(jnp.where(seen, hist, timestamp_begin - 1), axis=1)  # non-decreasing
    floor = jnp.where(single[:, 0], newest, newest + 1)
    floor = jnp.where(seen.any(axis=1), floor, timestamp_begin)
    banned = banned | (is_ts[None] & (ids[None] < floor[:, None]))  # rule 3
    first = ~is_ts if max_initial is None else ~is_ts | (ids > timestamp_begin + max_initial)
    banned = banned | (first[None] & (t == 0))  # rule 4
    masked = jnp.where(banned, -jnp.inf, logits.astype(jnp.float32))
    ts_mass = jax.nn.logsumexp(jnp.where(is_ts[None], masked, -jnp.inf), axis=1)
    best_text = jnp.max(jnp.where(is_ts[None], -jnp.inf, masked), axis=1)
    return banned | ((ts_mass > best_text)[:, None] & ~is_ts[None])  # rule 5
