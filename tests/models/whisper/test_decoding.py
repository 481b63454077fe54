"""Jitted greedy / beam decoding against Hugging Face `generate` on a tiny random Whisper."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import whisper_hf as H
from references.whisper_hf import torch

from pqm_jax import lora as lora_lib
from pqm_jax.models.whisper import decoding
from pqm_jax.models.whisper import family as whisper_family
from pqm_jax.quant import tree as qtree
from pqm_jax.quant.native import matvec, rows

BATCH = 8
OPTS = decoding.DecodeOptions(
    prompt=H.PROMPT, eot=H.EOT, suppress=H.SUPPRESS, begin_suppress=H.BEGIN_SUPPRESS
)


@functools.cache
def _setup():
    model = H.hf_tiny()
    return model, H.params_of(model), H.mel_batch(BATCH, seed=11)


@functools.cache
def _hf(**kwargs) -> list[list[int]]:
    """HF `generate` transcripts (prompt removed, end-of-text padding dropped)."""
    model, _, mel = _setup()
    with torch.no_grad():
        out = model.generate(torch.from_numpy(mel), do_sample=False, **kwargs)
    return [[t for t in row if t != H.EOT] for row in out.tolist()]


def _texts(result: decoding.Result) -> list[list[int]]:
    tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(tokens.shape[0])]


def _run(opts=OPTS, params=None, lora=None) -> decoding.Result:
    _, base, mel = _setup()
    return decoding.generate(
        base if params is None else params, mel, config=H.config(), options=opts, lora=lora
    )


@functools.cache
def _greedy() -> decoding.Result:
    return _run()


def test_greedy_equals_hf_generate():
    ours = _texts(_greedy())
    assert ours == _hf()
    assert len({len(t) for t in ours}) > 2, "rows should stop at different lengths"
    tokens = np.asarray(_greedy().tokens)
    for row, n in zip(tokens, np.asarray(_greedy().lengths)):
        assert (row[n:] == H.EOT).all()  # finished rows keep emitting end-of-text


def test_beam_search_equals_hf_beam_search():
    ours = _texts(_run(dataclasses.replace(OPTS, beam_size=3)))
    assert ours == _hf(num_beams=3, length_penalty=1.0)


def test_beam_one_is_greedy_and_more_beams_score_higher():
    greedy = _greedy()
    beam_path = jax.jit(decoding._beam, static_argnums=(3, 4))  # the beam code with k = 1
    beam1 = beam_path(*_setup()[1:], None, H.config(), OPTS)
    np.testing.assert_array_equal(beam1.tokens, greedy.tokens)
    np.testing.assert_allclose(beam1.scores, greedy.scores, rtol=1e-5)
    wide = _run(dataclasses.replace(OPTS, beam_size=4, length_penalty=0.0))
    assert (np.asarray(wide.scores) >= np.asarray(greedy.scores) - 1e-4).all()


def test_no_repeat_ngram_equals_hf():
    opts = dataclasses.replace(OPTS, no_repeat_ngram_size=3)
    ours = _texts(_run(opts))
    assert ours == _hf(no_repeat_ngram_size=3)
    assert ours != _texts(_greedy())  # the rule did change something on this model
    for row in ours:
        grams = [tuple(row[i : i + 3]) for i in range(len(row) - 2)]
        assert len(grams) == len(set(grams))


def _loop_cut(row: list[int], repeats: int, max_period: int) -> list[int]:
    """Reference for `max_repeats`: cut where the tail first holds a block repeated R+1 times."""
    for t in range(1, len(row) + 1):
        for p in range(1, max_period + 1):
            n = p * (repeats + 1)
            if t >= n and row[t - n : t] == row[t - p : t] * (repeats + 1):
                return row[:t]
    return row


def test_phases_shrink_by_quarters_to_one_row():
    assert decoding._phase_sizes(8) == [8, 2, 1]
    assert decoding._phase_sizes(16) == [16, 4, 1]
    assert decoding._phase_sizes(5) == [5, 1]
    assert decoding._phase_sizes(1) == [1]


def test_each_row_decodes_as_it_would_alone():
    """The batch of 8 (rows stopping at different steps, so later phases gather the running
    rows) gives every row the tokens and score it gets decoded on its own (batch 1, no phases)."""
    _, params, mel = _setup()
    batch = _greedy()
    for i in range(BATCH):
        alone = decoding.generate(params, mel[i : i + 1], config=H.config(), options=OPTS)
        np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[i])
        np.testing.assert_allclose(float(alone.scores[0]), float(batch.scores[i]), rtol=1e-5)


def test_a_sampled_row_does_not_depend_on_its_batchmates():
    _, params, mel = _setup()
    hot = dataclasses.replace(OPTS, temperature=1.0)
    key = jax.random.key(3)
    other = mel.copy()
    other[1:] = mel[::-1][:-1]  # row 0 kept, every other row replaced
    a = decoding.generate(params, mel, config=H.config(), options=hot, key=key)
    b = decoding.generate(params, other, config=H.config(), options=hot, key=key)
    np.testing.assert_array_equal(np.asarray(a.tokens)[0], np.asarray(b.tokens)[0])
    assert (np.asarray(a.tokens)[1:] != np.asarray(b.tokens)[1:]).any()


def test_repetition_stop():
    opts = dataclasses.replace(OPTS, max_repeats=2, max_period=4)
    ours = _texts(_run(opts))
    plain = _texts(_greedy())
    assert ours == [_loop_cut(r, 2, 4) for r in plain]
    assert ours != plain


def test_suppression_rules_and_length_cap():
    first = _greedy().tokens[0, 0]
    common = int(np.bincount(np.asarray(_greedy().tokens).ravel()).argmax())
    opts = dataclasses.replace(
        OPTS,
        suppress=(*OPTS.suppress, common),
        begin_suppress=(*OPTS.begin_suppress, int(first)),
        max_new_tokens=12,
    )
    r = _run(opts)
    tokens = np.asarray(r.tokens)
    assert tokens.shape == (BATCH, 12)
    assert (tokens[:, 0] != first).all()
    assert not (tokens == common).any() or common == H.EOT
    assert not np.isin(tokens, H.SUPPRESS).any()


def test_nf4_weights_decode_like_their_dequantised_copy():
    _, params, _ = _setup()
    q = qtree.quantize_tree(params, qtree.match_any([r"_proj/kernel$", r"fc\d/kernel$"]), "nf4")
    # Dequantised per step inside the loop vs the dense copy through the greedy program.
    a = _run(dataclasses.replace(OPTS, predequantize=False), params=q)
    b = _run(params=qtree.dequantize_tree(q))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_fused_steps_decode_like_predequantised_weights(double_quant, monkeypatch):
    """The token loop on 4-bit weights (the native kernel reads their codes; the default) gives
    the tokens of the loop on their dequantised copy, with the tied embedding quantised too."""
    monkeypatch.setenv("PQM_NATIVE", "1")  # the suite's eight fake devices switch it off
    _, params, mel = _setup()
    targets = [*whisper_family.LINEAR_TARGETS, *whisper_family.EMBEDDING_TARGETS]
    q = qtree.quantize_tree(params, qtree.match_any(targets), "nf4", double_quant=double_quant)
    fused = _run(params=q)
    dense = _run(dataclasses.replace(OPTS, quantized_steps=False), params=q)
    np.testing.assert_array_equal(fused.tokens, dense.tokens)
    np.testing.assert_allclose(fused.scores, dense.scores, rtol=1e-4)
    if matvec.available():
        args = (q, mel, None, jax.random.key(0), jnp.float32(1e-6))
        text = decoding._generate_jit.lower(*args, config=H.config(), options=OPTS).as_text()
        assert matvec.TARGET in text


@pytest.fixture
def _native_steps(monkeypatch):
    """The float32 kernel on (the suite's eight fake devices switch it off), with the jitted
    programs traced afresh before and after: a cached program would keep its own choice."""
    monkeypatch.setenv("PQM_NATIVE", "1")
    decoding._generate_jit.clear_cache()
    yield
    decoding._generate_jit.clear_cache()


@pytest.mark.skipif(not rows.available(), reason="native kernel unavailable (no C++ compiler?)")
@pytest.mark.usefixtures("_native_steps")
def test_float32_steps_through_the_native_kernel_equal_hf_generate():
    """Attention over cached keys/values and the logits by `quant.native.rows` (the default on a
    one-device CPU host): greedy and beam-search tokens still equal HF's, scores close to XLA's."""
    _, params, mel = _setup()
    args = (params, mel, None, jax.random.key(0), jnp.float32(1e-6))
    text = decoding._generate_jit.lower(*args, config=H.config(), options=OPTS).as_text()
    assert text.count(rows.TARGET) >= 3  # self- and cross-attention, logits
    off = dataclasses.replace(OPTS, native_steps=False)
    assert (
        rows.TARGET
        not in decoding._generate_jit.lower(*args, config=H.config(), options=off).as_text()
    )
    ours = _run()
    assert _texts(ours) == _hf()
    np.testing.assert_allclose(ours.scores, _greedy_xla().scores, rtol=1e-4)
    beams = _texts(_run(dataclasses.replace(OPTS, beam_size=3)))
    assert beams == _hf(num_beams=3, length_penalty=1.0)


def _greedy_xla() -> decoding.Result:
    return _run(dataclasses.replace(OPTS, native_steps=False))


def _is_lora(x) -> bool:
    return isinstance(x, lora_lib.LoraWeights)


def _bank(params):
    """Two speakers' adapters: speaker 0 fresh (B = 0), speaker 1 with random non-zero B."""
    cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=whisper_family.LORA_TARGETS)
    zero = lora_lib.init(params, cfg, key=jax.random.key(0))
    leaves, treedef = jax.tree.flatten(lora_lib.init(params, cfg, key=jax.random.key(1)), _is_lora)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [w.replace(b=0.5 * jax.random.normal(k, w.b.shape)) for w, k in zip(leaves, keys)]
    return lora_lib.stack([zero, jax.tree.unflatten(treedef, leaves)])


@pytest.mark.parametrize("beams", [1, 3])
def test_per_example_adapter_bank(beams):
    """One batch mixing speakers equals each speaker's batch; B = 0 leaves the base output."""
    _, params, _ = _setup()
    bank = _bank(params)
    speakers = np.asarray([0, 1, 1, 0, 1, 0, 0, 1])
    opts = dataclasses.replace(OPTS, beam_size=beams)
    mixed = np.asarray(_run(opts, lora=lora_lib.take(bank, jnp.asarray(speakers))).tokens)
    base = np.asarray(_run(opts).tokens)
    np.testing.assert_array_equal(mixed[speakers == 0], base[speakers == 0])
    ones = np.asarray(_run(opts, lora=lora_lib.take(bank, jnp.ones(BATCH, jnp.int32))).tokens)
    np.testing.assert_array_equal(mixed[speakers == 1], ones[speakers == 1])
    assert (ones != base).any()  # the adapters matter
    if beams == 1:  # one shared (unbatched) adapter for the whole batch: same as the bank rows
        shared = np.asarray(_run(opts, lora=lora_lib.take(bank, 1)).tokens)
        np.testing.assert_array_equal(shared, ones)


def test_new_batch_contents_reuse_the_compiled_program():
    _greedy()
    before = decoding._generate_jit._cache_size()
    _, params, mel = _setup()
    decoding.generate(params, mel[::-1].copy(), config=H.config(), options=OPTS)
    assert decoding._generate_jit._cache_size() == before


def test_options_validation():
    with pytest.raises(ValueError, match="beam_size"):
        dataclasses.replace(OPTS, beam_size=0)
    with pytest.raises(ValueError, match="prompt"):
        decoding.DecodeOptions(prompt=(), eot=1)
    with pytest.raises(ValueError, match="encoder_dtype must be float32, bfloat16 or None"):
        dataclasses.replace(OPTS, encoder_dtype="float16")
    opts = decoding.DecodeOptions(prompt=[1, 2], eot=3, suppress=[4])  # lists from JSON
    assert hash(opts) == hash(decoding.DecodeOptions(prompt=(1, 2), eot=3, suppress=(4,)))


def test_greedy_pick_is_argmax_with_its_ties_nans_and_infinities():
    # The greedy loop picks with two vectorised reductions instead of jnp.argmax: same index,
    # the first largest, a NaN counting as the largest.
    rng = np.random.default_rng(0)
    for case in range(60):
        x = rng.normal(size=(4, 37)).astype(np.float32)
        if case % 3 == 0:  # a tie for the largest, never at the lowest index alone
            x[case % 4, [5, 11, 30]] = x.max() + 1.0
        if case % 5 == 0:
            x[(case + 1) % 4, rng.integers(37)] = np.nan
        if case % 7 == 0:
            x[(case + 2) % 4] = -np.inf  # a row with everything banned
        want = np.asarray(jnp.argmax(jnp.asarray(x), axis=-1))
        np.testing.assert_array_equal(np.asarray(decoding._argmax(jnp.asarray(x))), want)
