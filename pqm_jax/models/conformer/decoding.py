"""Decoding for the Conformer AED: CTC greedy, and attention beam search with CTC prefix scoring.

Joint decoding follows ESPnet's `BeamSearch` with `CTCPrefixScorer`: each hypothesis proposes its
`pre_beam` best next tokens by attention score; each candidate gets
`(1 - ctc_weight) * log p_att + ctc_weight * (psi_ctc(prefix + c) - psi_ctc(prefix))`, where psi is
the CTC prefix probability (Watanabe et al. 2017, Algorithm 2); for eos it is the probability of
the whole prefix. A finished hypothesis stays in the beam with its score frozen. Everything runs
in one jitted `lax.while_loop`; the decoder is re-run on the whole (static-length) token buffer at
every step, which is simple and fine for the short outputs of this project.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from pqm_jax.models.conformer import ctc
from pqm_jax.models.conformer import model as conformer

NEG = -1e30  # log(0) that stays finite under additions (no inf - inf)


@dataclasses.dataclass(frozen=True)
class BeamOptions:
    """Beam search settings (hashable: a static jit argument).

    Attributes:
      beam: hypotheses kept per utterance.
      ctc_weight: lambda of the joint score (0: attention only; 1: CTC only, attention pre-beam).
      max_len: most tokens per hypothesis (eos included).
      pre_beam: candidates per hypothesis scored by CTC (default: int(1.5 * beam), as ESPnet).
    """

    beam: int = 5
    ctc_weight: float = 0.3
    max_len: int = 64
    pre_beam: int | None = None

    def candidates(self, vocab: int) -> int:
        return min(vocab - 1, self.pre_beam or max(int(1.5 * self.beam), 1))


def ctc_greedy(
    ctc_logits: jax.Array, enc_lens: jax.Array, *, blank: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
      ctc_logits: [B, T, vocab]; enc_lens: [B].

    Returns:
      (tokens [B, T] left-aligned and padded with blank, lengths [B]).
    """
    best = jnp.argmax(ctc_logits, -1)
    prev = jnp.pad(best, ((0, 0), (1, 0)), constant_values=blank)[:, :-1]
    keep = (best != blank) & (best != prev) & ctc.length_mask(enc_lens, best.shape[1])
    order = jnp.argsort(~keep, axis=1, stable=True)  # kept frames first, in time order
    tokens = jnp.take_along_axis(jnp.where(keep, best, blank), order, axis=1)
    return tokens, keep.sum(1)


def ctc_prefix_init(logp: jax.Array, *, blank: int = 0) -> jax.Array:
    """Forward variables r [N, T, 2] (non-blank, blank) of the empty prefix from log-probs
    logp [N, T, vocab]: r_n = log 0, r_b[t] = sum_{s <= t} logp[s, blank]."""
    rb = jnp.cumsum(logp[..., blank], axis=1)
    return jnp.stack([jnp.full_like(rb, NEG), rb], axis=-1)


def ctc_prefix_extend(
    logp: jax.Array,
    enc_lens: jax.Array,
    r: jax.Array,
    last: jax.Array,
    empty: jax.Array,
    cands: jax.Array,
    *,
    eos: int,
    blank: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """CTC prefix scores of every prefix + c for candidate tokens c.

    Args:
      logp: [N, T, vocab] CTC log-probabilities; enc_lens: [N] valid frames.
      r: [N, T, 2] forward variables of each prefix; last: [N] its last token; empty: [N] bool,
        true for the empty prefix (only sos so far).
      cands: [N, K] candidate tokens (never blank); eos scores the whole prefix.

    Returns:
      (psi [N, K] log prefix probabilities, r_new [N, K, T, 2]).
    """
    n, t, _ = logp.shape
    k = cands.shape[1]
    xc = jnp.take_along_axis(logp, jnp.broadcast_to(cands[:, None, :], (n, t, k)), 2)
    xb = logp[..., blank]  # [N, T]
    total = jnp.logaddexp(r[..., 0], r[..., 1])  # [N, T]
    same = (cands == last[:, None])[:, None, :]
    phi = jnp.where(same, r[..., 1][..., None], total[..., None])  # [N, T, K]
    start = jnp.broadcast_to(jnp.where(empty, 0.0, NEG)[:, None, None], (n, 1, k))
    phi_prev = jnp.concatenate([start, phi[:, :-1]], axis=1)
    valid = ctc.length_mask(enc_lens, t)[..., None]
    psi = jax.nn.logsumexp(jnp.where(valid, phi_prev + xc, NEG), axis=1)  # [N, K]
    final = jnp.take_along_axis(total, jnp.maximum(enc_lens - 1, 0)[:, None], axis=1)  # [N, 1]
    psi = jnp.where(cands == eos, final, psi)

    def step(carry, inp):
        rn, rb = carry
        pp, x, xblank = inp
        rn_new = jnp.logaddexp(rn, pp) + x
        rb_new = jnp.logaddexp(rn, rb) + xblank[:, None]
        return (rn_new, rb_new), jnp.stack([rn_new, rb_new], -1)

    init = (jnp.full((n, k), NEG), jnp.full((n, k), NEG))
    inputs = (jnp.swapaxes(phi_prev, 0, 1), jnp.swapaxes(xc, 0, 1), jnp.swapaxes(xb, 0, 1))
    _, rs = jax.lax.scan(step, init, inputs)  # [T, N, K, 2]
    return psi, jnp.transpose(rs, (1, 2, 0, 3))


@functools.partial(jax.jit, static_argnames=("config", "options"))
def beam_search(
    params: dict,
    feats: jax.Array,
    feat_lens: jax.Array,
    *,
    config: conformer.ConformerConfig,
    options: BeamOptions = BeamOptions(),
    lora: Any = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Joint CTC/attention beam search.

    Args:
      feats: [B, T, n_mels]; feat_lens: [B].
      lora: optional adapter tree (shared by the batch).

    Returns:
      (tokens [B, max_len] padded with eos (no sos; eos ends each), lengths [B] without eos,
      scores [B] joint log scores of the chosen hypotheses).
    """
    b, w, big_l = feats.shape[0], options.beam, options.max_len
    lam, eos, sos = options.ctc_weight, config.eos, config.sos
    enc, enc_lens = conformer.encode(params, feats, feat_lens, config=config, lora=lora)
    logp = jax.nn.log_softmax(ctc.logits(params, enc, lora=lora), -1)
    n = b * w
    rep = lambda x: jnp.repeat(x, w, axis=0)
    enc, enc_lens, logp = rep(enc), rep(enc_lens), rep(logp)
    enc_mask = ctc.length_mask(enc_lens, enc.shape[1])
    k = options.candidates(config.vocab_size)
    tokens = jnp.full((n, big_l + 1), eos, jnp.int32).at[:, 0].set(sos)
    first = jnp.arange(n) % w == 0  # one live hypothesis per utterance at the start
    state = dict(
        step=jnp.zeros((), jnp.int32),
        tokens=tokens,
        score=jnp.where(first, 0.0, NEG),
        ended=jnp.zeros((n,), bool),
        r=ctc_prefix_init(logp, blank=config.blank),
        psi=jnp.zeros((n,)),
    )

    def cond(s):
        return (s["step"] < big_l) & ~jnp.all(s["ended"])

    def body(s):
        step = s["step"]
        logits = conformer.decode(
            params, s["tokens"][:, :big_l], enc, enc_mask, config=config, lora=lora
        )
        att = jax.nn.log_softmax(jax.lax.dynamic_index_in_dim(logits, step, 1, False), -1)
        att = att.at[:, config.blank].set(NEG)
        att_c, cands = jax.lax.top_k(att, k)
        last = jax.lax.dynamic_index_in_dim(s["tokens"], step, 1, False)
        psi, r_new = ctc_prefix_extend(
            logp, enc_lens, s["r"], last, jnp.full((n,), step == 0), cands, eos=eos
        )
        cand = s["score"][:, None] + (1.0 - lam) * att_c + lam * (psi - s["psi"][:, None])
        frozen = jnp.where(jnp.arange(k) == 0, s["score"][:, None], NEG)
        cand = jnp.where(s["ended"][:, None], frozen, cand)
        cands = jnp.where(s["ended"][:, None], eos, cands)
        best, idx = jax.lax.top_k(cand.reshape(b, w * k), w)  # [B, W]
        parent = (jnp.arange(b)[:, None] * w + idx // k).reshape(n)
        choice = (idx % k).reshape(n)
        token = cands[parent, choice]
        toks = s["tokens"][parent]
        toks = jax.lax.dynamic_update_slice(toks, token[:, None], (0, step + 1))
        ended = s["ended"][parent] | (token == eos)
        return dict(
            step=step + 1,
            tokens=toks,
            score=best.reshape(n),
            ended=ended,
            r=r_new[parent, choice],
            psi=jnp.where(s["ended"][parent], s["psi"][parent], psi[parent, choice]),
        )

    s = jax.lax.while_loop(cond, body, state)
    score = s["score"].reshape(b, w)
    ended = s["ended"].reshape(b, w)
    pick = jnp.where(ended.any(1, keepdims=True) & ~ended, NEG, score)
    best = jnp.argmax(pick, axis=1)
    rows = jnp.arange(b) * w + best
    out = s["tokens"][rows, 1:]
    lengths = jnp.argmax(jnp.concatenate([out, jnp.full((b, 1), eos)], 1) == eos, axis=1)
    return out, lengths, score[jnp.arange(b), best]


@functools.partial(jax.jit, static_argnames=("config", "options"))
def beam_search_bank(
    params: dict,
    feats: jax.Array,
    feat_lens: jax.Array,
    lora: Any,
    *,
    config: conformer.ConformerConfig,
    options: BeamOptions = BeamOptions(),
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`beam_search` where utterance i uses its own adapters: every leaf of `lora` has a leading
    axis [B] (e.g. `lora.take(bank, rows)`); one compiled program serves any mix of speakers."""

    def one(f, n, lo):
        out = beam_search(params, f[None], n[None], config=config, options=options, lora=lo)
        return jax.tree.map(lambda x: x[0], out)

    return jax.vmap(one)(feats, feat_lens, lora)
