"""CTC greedy decoding, CTC prefix scores and joint CTC/attention beam search."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pqm_jax.models.conformer import ctc
from pqm_jax.models.conformer import decoding as dec
from pqm_jax.models.conformer import model as conformer

CONFIG = conformer.ConformerConfig(
    vocab_size=12,
    n_mels=16,
    d_model=32,
    encoder_layers=1,
    encoder_heads=4,
    encoder_ffn=48,
    kernel_size=5,
    decoder_layers=1,
    decoder_heads=4,
    decoder_ffn=40,
)


@functools.cache
def _params() -> dict:
    p = conformer.init(CONFIG, key=jax.random.key(0))
    # Larger output scales make hypotheses differ and end (eos) within a few steps.
    out = p["decoder"]["output_layer"]
    out["kernel"] = out["kernel"] * 4.0
    out["bias"] = out["bias"].at[CONFIG.eos].set(1.0)
    p["ctc"]["ctc_lo"]["kernel"] = p["ctc"]["ctc_lo"]["kernel"] * 4.0
    return p


def _feats(b: int, t: int) -> jax.Array:
    return jax.random.normal(jax.random.key(5), (b, t, CONFIG.n_mels))


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    path = np.array([[0, 3, 3, 0, 3, 5, 5, 0, 7, 7], [4, 4, 0, 4, 2, 2, 2, 2, 2, 2]])
    logits = jax.nn.one_hot(path, 9) * 5.0
    tokens, lengths = dec.ctc_greedy(logits, jnp.array([10, 4]))
    np.testing.assert_array_equal(lengths, [4, 2])
    np.testing.assert_array_equal(tokens[0, :4], [3, 3, 5, 7])
    np.testing.assert_array_equal(tokens[1, :2], [4, 4])
    assert (tokens[0, 4:] == 0).all() and (tokens[1, 2:] == 0).all()


def test_prefix_scores_of_a_complete_sequence_sum_to_the_ctc_likelihood():
    rng = np.random.default_rng(0)
    t, v, eos = 9, 6, 5
    logp = jax.nn.log_softmax(jnp.asarray(rng.standard_normal((2, t, v)), jnp.float32))
    lens = jnp.array([9, 7])
    y = [[2, 2, 3], [1, 4, 4]]  # repeats exercise the "same last token" rule
    r = dec.ctc_prefix_init(logp)
    psi_prev = jnp.zeros(2)
    total = jnp.zeros(2)
    last = jnp.full((2,), eos)
    for i, tok in enumerate([*zip(*y), (eos, eos)]):
        cands = jnp.asarray(tok)[:, None]
        psi, r_new = dec.ctc_prefix_extend(
            logp, lens, r, last, jnp.full((2,), i == 0), cands, eos=eos
        )
        total = total + psi[:, 0] - psi_prev
        psi_prev, r, last = psi[:, 0], r_new[:, 0], cands[:, 0]
    labels = jnp.asarray(y)
    want = -optax.ctc_loss(
        logp, 1.0 - ctc.length_mask(lens, t), labels, jnp.zeros((2, 3)), blank_id=0
    )
    np.testing.assert_allclose(total, want, rtol=1e-5)


def _attention_score(params, feats, lens, tokens):
    """Sum of attention log-probabilities of tokens [1, n] (eos included) after sos."""
    enc, enc_lens = conformer.encode(params, feats, lens, config=CONFIG)
    inp = jnp.concatenate([jnp.array([[CONFIG.sos]]), tokens[:, :-1]], axis=1)
    mask = ctc.length_mask(enc_lens, enc.shape[1])
    logp = jax.nn.log_softmax(conformer.decode(params, inp, enc, mask, config=CONFIG), -1)
    return float(jnp.take_along_axis(logp, tokens[..., None], -1).sum()), enc, enc_lens


def test_beam_one_without_ctc_is_greedy_attention():
    feats, lens = _feats(1, 40), jnp.array([40])
    opts = dec.BeamOptions(beam=1, ctc_weight=0.0, max_len=8, pre_beam=3)
    tokens, length, _ = dec.beam_search(_params(), feats, lens, config=CONFIG, options=opts)
    enc, enc_lens = conformer.encode(_params(), feats, lens, config=CONFIG)
    mask = ctc.length_mask(enc_lens, enc.shape[1])
    seq = [CONFIG.sos]
    for _ in range(8):
        logits = conformer.decode(_params(), jnp.array([seq]), enc, mask, config=CONFIG)[0, -1]
        seq.append(int(jnp.argmax(logits.at[0].set(-jnp.inf))))
        if seq[-1] == CONFIG.eos:
            break
    got = [int(x) for x in tokens[0, : int(length[0])]]
    assert got == [x for x in seq[1:] if x != CONFIG.eos]


def test_joint_beam_score_equals_rescored_hypothesis():
    feats, lens = _feats(2, 48), jnp.array([48, 35])
    lam = 0.4
    opts = dec.BeamOptions(beam=3, ctc_weight=lam, max_len=10)
    tokens, lengths, scores = dec.beam_search(_params(), feats, lens, config=CONFIG, options=opts)
    for i in range(2):
        n = int(lengths[i])
        assert n < opts.max_len, "the test expects hypotheses that end"
        hyp = tokens[i : i + 1, : n + 1]  # with its eos
        assert int(hyp[0, -1]) == CONFIG.eos
        att, enc, enc_lens = _attention_score(_params(), feats[i : i + 1], lens[i : i + 1], hyp)
        logits = ctc.logits(_params(), enc)
        labels = hyp[:, :n] if n else jnp.zeros((1, 1), jnp.int32)
        label_pad = jnp.zeros((1, max(n, 1))) if n else jnp.ones((1, 1))
        pad = 1.0 - ctc.length_mask(enc_lens, enc.shape[1])
        ctc_ll = -float(optax.ctc_loss(logits, pad, labels, label_pad)[0])
        np.testing.assert_allclose(float(scores[i]), (1 - lam) * att + lam * ctc_ll, rtol=1e-4)
    # A wider beam never finds a worse joint score than a single hypothesis.
    narrow = dec.BeamOptions(beam=1, ctc_weight=lam, max_len=10)
    _, _, s1 = dec.beam_search(_params(), feats, lens, config=CONFIG, options=narrow)
    assert (np.asarray(scores) >= np.asarray(s1) - 1e-4).all()
