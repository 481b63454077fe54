"""Parity of the functional Conformer AED with a plain PyTorch reference (tests/references)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references.conformer_torch import (
    F,
    RelMHA,
    params_of,
    random_feats,
    reference_model,
    rel_table,
    small_config,
    torch,
)

from pqm_jax.models.conformer import model as conformer
from pqm_jax.models.conformer import relpos


def test_rel_shift_equals_pad_and_reshape_trick():
    bd = np.random.default_rng(0).standard_normal((2, 3, 7, 13)).astype(np.float32)
    want = RelMHA.rel_shift(torch.from_numpy(bd)).numpy()
    np.testing.assert_array_equal(np.asarray(relpos.rel_shift(jnp.asarray(bd))), want)


def test_relative_position_table():
    np.testing.assert_allclose(relpos.table(9, 16), rel_table(9, 16)[0].numpy(), atol=1e-6)


def test_rel_attention_matches_torch():
    torch.manual_seed(0)
    b, t, d, h = 2, 11, 32, 4
    ref = RelMHA(d, h).eval()
    x = torch.randn(b, t, d)
    valid = torch.arange(t)[None, :] < torch.tensor([[t], [7]])
    pos = rel_table(t, d)
    want = ref(x, pos, valid[:, None, :]).detach().numpy()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    p = {f"linear_{n}": {"kernel": sd[f"linear_{n}.weight"].T} for n in ("q", "k", "v", "out")}
    for n in ("q", "k", "v", "out"):
        p[f"linear_{n}"]["bias"] = sd[f"linear_{n}.bias"]
    p["linear_pos"] = {"kernel": sd["linear_pos.weight"].T}
    p |= {"pos_bias_u": sd["pos_bias_u"], "pos_bias_v": sd["pos_bias_v"]}
    got = relpos.self_attention(
        p, jnp.asarray(x.numpy()), jnp.asarray(pos[0].numpy()), jnp.asarray(valid.numpy()), None,
        None, heads=h,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [{}, {"conv_norm": "layer_norm", "macaron": False}],
    ids=["batch_norm-macaron", "layer_norm-plain"],
)
def test_encoder_decoder_ctc_match_torch(options):
    c = small_config(**options)
    model = reference_model(c)
    params = params_of(model, c)
    feats, lens = random_feats(3, 41, c.n_mels), np.array([41, 30, 23])
    tokens = np.random.default_rng(2).integers(1, c.vocab_size, (3, 6))
    with torch.no_grad():
        enc_t, lens_t = model.encoder(torch.from_numpy(feats), torch.from_numpy(lens))
        valid_t = torch.arange(enc_t.size(1))[None, :] < lens_t[:, None]
        logits_t = model.decoder(torch.from_numpy(tokens), enc_t, valid_t)
        ctc_t = model.ctc.ctc_lo(enc_t)
    enc, enc_lens = conformer.encode(params, jnp.asarray(feats), jnp.asarray(lens), config=c)
    np.testing.assert_array_equal(np.asarray(enc_lens), lens_t.numpy())
    valid = valid_t.numpy()
    np.testing.assert_allclose(np.asarray(enc)[valid], enc_t.numpy()[valid], atol=1e-5, rtol=1e-5)
    logits = conformer.decode(params, jnp.asarray(tokens), enc, jnp.asarray(valid), config=c)
    np.testing.assert_allclose(np.asarray(logits), logits_t.numpy(), atol=1e-5, rtol=1e-5)
    ctc_logits = conformer.ctc.logits(params, enc)
    np.testing.assert_allclose(
        np.asarray(ctc_logits)[valid], ctc_t.numpy()[valid], atol=1e-5, rtol=1e-5
    )


def test_joint_loss_matches_torch():
    c = small_config()
    model = reference_model(c)
    params = params_of(model, c)
    feats, lens = random_feats(2, 45, c.n_mels), np.array([45, 33])
    labels = np.array([[3, 4, 5, 6], [7, 8, 0, 0]])
    label_lens = np.array([4, 2])
    ctc_weight, smoothing = 0.3, 0.1
    with torch.no_grad():
        enc_t, lens_t = model.encoder(torch.from_numpy(feats), torch.from_numpy(lens))
        valid_t = torch.arange(enc_t.size(1))[None, :] < lens_t[:, None]
        logp = torch.log_softmax(model.ctc.ctc_lo(enc_t), -1).transpose(0, 1)
        ctc = F.ctc_loss(
            logp, torch.from_numpy(labels), lens_t, torch.from_numpy(label_lens),
            reduction="sum", zero_infinity=True,
        ) / 2  # fmt: skip
        eos = c.vocab_size - 1
        ys = [list(r[:n]) for r, n in zip(labels, label_lens)]
        ys_in = torch.tensor([[eos, *y] + [eos] * (4 - len(y)) for y in ys])
        ys_out = torch.tensor([[*y, eos] + [-1] * (4 - len(y)) for y in ys])
        logits = model.decoder(ys_in, enc_t, valid_t).reshape(-1, c.vocab_size)
        target = ys_out.reshape(-1)
        ignore = target == -1
        dist = torch.full_like(logits, smoothing / (c.vocab_size - 1))
        dist.scatter_(1, target.masked_fill(ignore, 0)[:, None], 1 - smoothing)
        kl = F.kl_div(torch.log_softmax(logits, 1), dist, reduction="none")
        att = kl.masked_fill(ignore[:, None], 0).sum() / 2
        want = ctc_weight * ctc + (1 - ctc_weight) * att
    got, aux = conformer.loss(
        params, jnp.asarray(feats), jnp.asarray(lens), jnp.asarray(labels),
        jnp.asarray(label_lens), config=c, ctc_weight=ctc_weight, smoothing=smoothing,
    )  # fmt: skip
    np.testing.assert_allclose(float(aux["ctc"]), float(ctc), rtol=1e-5)
    np.testing.assert_allclose(float(aux["att"]), float(att), rtol=1e-5)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    assert jax.numpy.isfinite(aux["acc"])
