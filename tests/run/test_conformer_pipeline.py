"""The Conformer through the training pipeline: the step loss is the model's joint loss, the
pretrain stage resumes bit-identically and writes a reusable model folder, and the whole run
(pretrain -> NF4 -> stage 2 -> stage 3 -> evaluate) produces the four systems."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pqm_jax import lora as lora_lib
from pqm_jax.eval import run as eval_run
from pqm_jax.models.conformer import decoding as conformer_decoding
from pqm_jax.models.conformer import family as conformer_family
from pqm_jax.models.conformer import model as conformer
from pqm_jax.quant import base as qbase
from pqm_jax.run import config as config_lib
from pqm_jax.run import featurize, pipeline, pretrain, results
from pqm_jax.run import workdir as workdir_lib
from pqm_jax.text import char_tokenizer as inputs
from pqm_jax.train import steps

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = conformer.ConformerConfig(
    vocab_size=12,
    n_mels=16,
    d_model=16,
    encoder_layers=1,
    encoder_heads=2,
    encoder_ffn=32,
    kernel_size=3,
    conv_norm="layer_norm",
    decoder_layers=1,
    decoder_heads=2,
    decoder_ffn=32,
)
VOCAB = inputs.CharVocab.build(["abc de", "fgh"])  # 12 tokens: blank, unk, 9 chars, sos/eos


def tiny(**overrides):
    c = config_lib.load_file(ROOT / "configs" / "conformer_tiny_test.py")
    return config_lib.from_dict(config_lib.override(c, overrides))


def _batch(texts, frames=40, seed=0):
    tok = inputs.CharTokenizer(VOCAB)
    rows = [featurize.encode_tokens(tok, t, 10) for t in texts]
    mel = np.random.default_rng(seed).normal(size=(len(texts), CFG.n_mels, frames))
    return {
        "mel": jnp.asarray(mel, jnp.float32),
        "inputs": jnp.asarray(np.stack([r[0] for r in rows])),
        "targets": jnp.asarray(np.stack([r[1] for r in rows])),
        "weights": jnp.asarray(np.stack([r[2] for r in rows])),
    }


def test_char_tokenizer_gives_the_teacher_forcing_layout():
    assert VOCAB.size == CFG.vocab_size
    tok = inputs.CharTokenizer(VOCAB)
    ids = tok.encode("Abc  DE")
    assert tok.decode(ids) == "abc de"
    x, y, w = featurize.encode_tokens(tok, "abc de", 10)
    labels = jnp.asarray([ids + [0] * (9 - len(ids))])
    want = conformer.teacher_forcing(labels, jnp.asarray([len(ids)]), config=CFG)
    n = len(ids) + 1
    np.testing.assert_array_equal(x[:n], np.asarray(want[0][0, :n]))
    np.testing.assert_array_equal(y[:n], np.asarray(want[1][0, :n]))
    np.testing.assert_array_equal(w, np.asarray(want[2][0, : len(w)], np.float32))


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3, 1.0])
def test_step_loss_is_the_joint_loss_of_the_model(ctc_weight):
    params = conformer.init(CFG, key=jax.random.key(0))
    texts = ["abc", "de fgh", "h"]
    batch = _batch(texts)
    config = steps.StepConfig(model=CFG, ctc_weight=ctc_weight)
    stats = steps.token_stats(None, params, batch, config=config)
    ids = [VOCAB.encode(t) for t in texts]
    labels = jnp.asarray([i + [0] * (6 - len(i)) for i in ids])
    lens = jnp.asarray([len(i) for i in ids])
    feats = jnp.swapaxes(batch["mel"], 1, 2)
    total, aux = conformer.loss(
        params,
        feats,
        jnp.full((3,), 40),
        labels,
        lens,
        config=CFG,
        ctc_weight=ctc_weight,
        smoothing=0.0,
    )
    np.testing.assert_allclose(float(stats["loss_sum"]) / 3, float(total), rtol=1e-5)
    assert float(stats["tokens"]) == sum(len(i) + 1 for i in ids)
    if ctc_weight < 1.0:
        acc = float(stats["correct"]) / float(stats["tokens"])
        np.testing.assert_allclose(acc, float(aux["acc"]), rtol=1e-6)
    # "backbone" training: the first argument is the model, the base is ignored
    backbone = steps.StepConfig(model=CFG, ctc_weight=ctc_weight, trainable="backbone")
    again = steps.token_stats(params, {}, batch, config=backbone)
    np.testing.assert_allclose(float(again["loss_sum"]), float(stats["loss_sum"]), rtol=1e-6)


def test_padding_rows_add_nothing_to_the_step_loss():
    params = conformer.init(CFG, key=jax.random.key(1))
    batch = _batch(["abc", "de"])
    padded = jax.tree.map(lambda x: jnp.concatenate([x, x[:1]]), batch)
    padded["weights"] = padded["weights"].at[2].set(0.0)
    config = steps.StepConfig(model=CFG)
    a = steps.token_stats(None, params, batch, config=config)
    b = steps.token_stats(None, params, padded, config=config)
    for k in a:
        np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-6)


def test_spec_augment_only_with_a_dropout_key():
    params = conformer.init(CFG, key=jax.random.key(2))
    batch = _batch(["abc de"])
    aug = steps.StepConfig(model=CFG, spec_augment=True)
    plain = steps.StepConfig(model=CFG)
    same = steps.token_stats(None, params, batch, config=aug)
    ref = steps.token_stats(None, params, batch, config=plain)
    assert float(same["loss_sum"]) == float(ref["loss_sum"])
    keyed = steps.token_stats(None, params, batch, config=aug, rng=jax.random.key(3))
    assert float(keyed["loss_sum"]) != float(ref["loss_sum"])


def test_bank_beam_search_equals_one_speaker_at_a_time():
    params = conformer.init(CFG, key=jax.random.key(4))
    cfg = lora_lib.LoraConfig(rank=2, alpha=4.0, targets=conformer.ATTENTION_TARGETS)
    banks = []
    for s in range(2):
        ad = lora_lib.init(params, cfg, key=jax.random.key(10 + s))
        # non-zero B so that the two speakers really differ
        noise = jax.random.key(20 + s)
        ad = jax.tree.map(lambda x, k=noise: x + 0.3 * jax.random.normal(k, x.shape), ad)
        banks.append(ad)
    bank = lora_lib.stack(banks)
    feats = jnp.asarray(np.random.default_rng(5).normal(size=(3, 40, CFG.n_mels)), jnp.float32)
    lens = jnp.full((3,), 40)
    rows = jnp.asarray([1, 0, 1])
    opts = conformer_decoding.BeamOptions(beam=2, max_len=6)
    got = conformer_decoding.beam_search_bank(
        params, feats, lens, lora_lib.take(bank, rows), config=CFG, options=opts
    )
    for i, r in enumerate([1, 0, 1]):
        want = conformer_decoding.beam_search(
            params, feats[i : i + 1], lens[i : i + 1], config=CFG, options=opts, lora=banks[r]
        )
        np.testing.assert_array_equal(np.asarray(got[0][i]), np.asarray(want[0][0]))
        np.testing.assert_allclose(float(got[2][i]), float(want[2][0]), rtol=1e-4, atol=1e-4)
    plain = conformer_decoding.beam_search(params, feats, lens, config=CFG, options=opts)
    assert not np.array_equal(np.asarray(got[0]), np.asarray(plain[0]))  # adapters mattered


def test_a_missing_model_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"point model\.path at the pretrain/ folder"):
        conformer_family.load(tmp_path / "nothing")


def test_a_bad_model_path_fails_before_any_work(tmp_path):
    config = tiny(**{"model.path": str(tmp_path / "no_model")})
    with pytest.raises(config_lib.ConfigError, match=r"model\.path=.*holds no trained Conformer"):
        pipeline.run_pipeline(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny Conformer run, killed once during pretraining and resumed, then evaluated."""
    workdir = tmp_path_factory.mktemp("conformer")
    with pytest.raises(pipeline.SimulatedFailure):
        pipeline.run_pipeline(tiny(**{"debug.fail_after_steps": 3}), workdir, progress=False)
    assert not (workdir / "pretrain" / "model.json").exists()
    summary = pipeline.run_pipeline(tiny(), workdir, progress=False)
    report = eval_run.evaluate(workdir, eval_run.EvalOptions(beam_size=2, batch_size=2))
    return workdir, summary, report


@pytest.mark.slow
def test_interrupted_pretraining_resumes_to_the_same_model(finished, tmp_path):
    workdir, _, _ = finished
    pipeline.check_workdir(tiny(), tmp_path)
    pretrain.train(tiny(), workdir_lib.Workdir(tmp_path), progress=False)
    resumed, _, _ = conformer_family.load(workdir / "pretrain")
    straight, _, _ = conformer_family.load(tmp_path / "pretrain")
    for x, y in zip(_leaves(resumed), _leaves(straight), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_a_conformer_run_quantises_adapts_and_scores(finished):
    workdir, summary, report = finished
    res = results.load(workdir)
    assert res.speakers() == ["en-029", "en-us"]
    assert summary["stage2"]["trained"] and summary["stage3"]["complete"]
    base, cfg = res.model()
    assert isinstance(cfg, conformer.ConformerConfig) and cfg.conv_norm == "layer_norm"
    enc0 = base["encoder"]["encoders_0"]
    assert qbase.is_quantized(enc0["self_attn"]["linear_q"]["kernel"])
    assert qbase.is_quantized(base["encoder"]["embed"]["conv_0"]["kernel"])
    assert qbase.is_quantized(base["decoder"]["embed"])
    assert not qbase.is_quantized(enc0["norm_mha"]["scale"])
    full, _, tok = res.full_precision()
    assert tok.vocab.tokens == inputs.CharVocab.load(workdir / "pretrain" / "tokens.txt").tokens
    assert not qbase.is_quantized(full["decoder"]["embed"])
    assert set(report["systems"]) == {"fp32", "nf4", "nf4_si", "pqm"}
    for row in report["systems"].values():
        assert set(row["per_speaker"]) == {"en-029", "en-us"}
    assert report["systems"]["fp32"]["size_bytes"] > 3 * report["systems"]["nf4"]["size_bytes"]
    lines = (workdir / "transcripts.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["ref"] for x in lines)
    events = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("stage") == "pretrain" and "loss" in e for e in events)
