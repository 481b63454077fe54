"""Whisper's timestamp rules against transformers' `WhisperTimeStampLogitsProcessor`, and greedy
decoding with timestamps (and sampling) against Hugging Face `generate`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import whisper_hf as H
from references.whisper_hf import torch, transformers

from pqm_jax.models.whisper import decoding
from pqm_jax.models.whisper import timestamps as ts_rules

TB = H.NO_TIMESTAMPS + 1  # <|0.00|> of the tiny vocabulary: 14 timestamps, 306..319


def _hf_processor(max_initial):
    cfg = types.SimpleNamespace(
        no_timestamps_token_id=H.NO_TIMESTAMPS,
        eos_token_id=H.EOT,
        bos_token_id=H.EOT,
        max_initial_timestamp_index=max_initial,
    )
    return transformers.WhisperTimeStampLogitsProcessor(cfg, begin_index=1)


def _histories(rng, n, t):
    """Rows of `t` tokens that follow the rules' shape: timestamps rising, text between."""
    rows = []
    for _ in range(n):
        row, stamp = [], int(rng.integers(TB, TB + 3))
        while len(row) < t:
            row.append(stamp)
            for _ in range(int(rng.integers(0, 3))):
                row.append(int(rng.integers(0, H.EOT)))
            stamp = min(stamp + int(rng.integers(0, 3)), H.VOCAB - 1)
            if rng.random() < 0.5:
                row.append(stamp)
        rows.append(row[:t])
    return rows


@pytest.mark.parametrize("max_initial", [None, 3])
@pytest.mark.parametrize("t", [0, 1, 2, 3, 5, 8])
def test_bans_equal_the_transformers_processor(t, max_initial):
    rng = np.random.default_rng(t)
    n, length = 32, 12
    logits = rng.normal(size=(n, H.VOCAB)).astype(np.float32) * 3
    logits[: n // 2, TB:] += 4.0  # half the rows lean to timestamps (rule 5 both ways)
    rows = _histories(rng, n, t)
    hist = np.full((n, length), H.EOT, np.int32)
    for i, r in enumerate(rows):
        hist[i, :t] = r
    input_ids = torch.tensor([[H.SOT, *r] for r in rows], dtype=torch.long).reshape(n, t + 1)
    ref = _hf_processor(max_initial)(input_ids, torch.from_numpy(logits.copy())).numpy()
    ours = ts_rules.bans(
        jnp.asarray(logits),
        jnp.zeros((n, H.VOCAB), bool),
        jnp.asarray(hist),
        jnp.int32(t),
        timestamp_begin=TB,
        eot=H.EOT,
        max_initial=max_initial,
    )
    np.testing.assert_array_equal(np.asarray(ours), np.isneginf(ref))
    assert np.isneginf(ref).any(axis=1).all()


OPTS = decoding.DecodeOptions(
    prompt=(H.SOT,),
    eot=H.EOT,
    suppress=H.SUPPRESS,
    begin_suppress=H.BEGIN_SUPPRESS,
    timestamp_begin=TB,
)


@functools.cache
def _setup():
    model = H.hf_tiny()
    return model, H.params_of(model), H.mel_batch(8, seed=11)


def _hf_generate(**kwargs):
    model, _, mel = _setup()
    cfg = copy.deepcopy(model.generation_config)  # the reference model is shared: leave it as is
    cfg.no_timestamps_token_id = H.NO_TIMESTAMPS
    cfg.is_multilingual = False
    cfg.max_initial_timestamp_index = None
    cfg.force_unique_generate_call = True  # one window: no seeking on to the next segment
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(mel), generation_config=cfg, return_timestamps=True, **kwargs
        )
    seqs = out if isinstance(out, torch.Tensor) else out["sequences"]
    return [[t for t in row if t != H.EOT] for row in seqs[:, 1:].tolist()]


def _ours(opts=OPTS, key=None):
    _, params, mel = _setup()
    res = decoding.generate(params, mel, config=H.config(), options=opts, key=key)
    tokens, lengths = np.asarray(res.tokens), np.asarray(res.lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(len(tokens))], res


def test_greedy_with_timestamps_equals_hf_generate():
    ours, _ = _ours()
    assert ours == _hf_generate(do_sample=False)
    assert all(row and row[0] >= TB for row in ours)  # each starts with a timestamp
    assert sum(t >= TB for row in ours for t in row) > len(ours)


def test_sampling_is_keyed_and_differs_from_greedy():
    hot = dataclasses.replace(OPTS, temperature=1.0)
    a, _ = _ours(hot, key=jax.random.key(1))
    b, _ = _ours(hot, key=jax.random.key(1))
    c, _ = _ours(hot, key=jax.random.key(2))
    greedy, _ = _ours()
    assert a == b and a != c and a != greedy
    for row in a:  # sampled rows obey the rules too: first a timestamp, stamps never decrease
        stamps = [t for t in row if t >= TB]
        assert row[0] >= TB and stamps == sorted(stamps)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        _ours(hot)


def test_no_speech_probability_is_reported_when_asked():
    _, res = _ours(dataclasses.replace(OPTS, no_speech=H.NO_TIMESTAMPS - 1))
    p = np.asarray(res.no_speech)
    assert p.shape == (8,) and ((p > 0) & (p < 1)).all()
    _, plain = _ours()
    assert (np.asarray(plain.no_speech) == 0).all()


def test_timestamp_options_are_checked():
    with pytest.raises(ValueError, match="notimestamps"):
        dataclasses.replace(OPTS, prompt=(H.SOT, H.NO_TIMESTAMPS))
    with pytest.raises(ValueError, match="beam_size 1"):
        dataclasses.replace(OPTS, temperature=0.5, beam_size=2)
