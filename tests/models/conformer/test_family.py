"""The Conformer family: base sharding rules that match its module names, its model folder."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pqm_jax import models, sharding
from pqm_jax.models.conformer import family as conformer_family
from pqm_jax.quant import tree as qtree
from pqm_jax.text import char_tokenizer

SPEC = models.ModelSpec(name="conformer", d_model=32, layers=1, heads=2, decoder_layers=1)


def _model():
    family = models.get("conformer")
    params, cfg, tok = family.scratch(SPEC, ["one two", "three"], key=jax.random.key(0))
    return family, params, cfg, tok


def test_the_base_is_split_over_the_model_axis_by_its_own_rules():
    family, params, _, _ = _model()
    base = qtree.quantize_tree(params, qtree.match_any(family.quant_targets), "nf4")
    mesh_config = sharding.MeshConfig(data=4, model=2).with_rules(family.shard_rules)
    mesh = sharding.make_mesh(mesh_config)
    s = sharding.base_shardings(base, mesh, mesh_config)
    layer = s["encoder"]["encoders_0"]
    for module in (layer["self_attn"]["linear_q"], layer["feed_forward"]["w_1"]):
        assert module["kernel"].inner.codes.spec == P("model")  # whole NF4 blocks per device
    dec = s["decoder"]["decoders_0"]
    assert dec["src_attn"]["linear_out"]["kernel"].inner.codes.spec == P("model")
    assert layer["norm_mha"]["scale"].spec == P()
    # Whisper's rules name none of these modules: the base would stay replicated
    whisper_rules = sharding.MeshConfig(data=4, model=2).with_rules(
        models.get("tiny.en").shard_rules
    )
    w = sharding.base_shardings(base, mesh, whisper_rules)
    assert {x.spec for x in jax.tree.leaves(w)} == {P()}


def test_a_saved_model_folder_loads_back(tmp_path):
    family, params, cfg, tok = _model()
    family.save(tmp_path / "m", params, cfg, tok, {"steps": 0})
    family.check_folder(tmp_path / "m")
    spec = models.ModelSpec(name="conformer", path=str(tmp_path / "m"))
    back, cfg_back, tok_back = family.load(spec, seed=0)
    assert cfg_back == cfg and tok_back.vocab.tokens == tok.vocab.tokens
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert isinstance(tok_back, char_tokenizer.CharTokenizer)
    with pytest.raises(FileNotFoundError, match="holds no trained Conformer"):
        conformer_family.FAMILY.check_folder(tmp_path / "nothing")


def test_the_family_checks_its_spec():
    with pytest.raises(ValueError, match=r"divisible by model\.heads"):
        models.ModelSpec(name="conformer", d_model=30, heads=4)
    assert models.ModelSpec(name="conformer").family.trains_from_scratch(SPEC)
    assert not models.get("conformer").full_window_s(None)


def test_pretraining_steps_warp_the_features_only_when_configured():
    from pqm_jax.run import config as config_lib
    from pqm_jax.run import context

    family, params, cfg, tok = _model()
    config = config_lib.defaults()
    config.pretrain.freq_warp = 0.2
    step = context.step_config(config, cfg, pretraining=True)
    assert step.freq_warp == 0.2
    assert context.step_config(config, cfg, pretraining=False).freq_warp == 0.0
    rng = np.random.default_rng(0)
    ids = tok.encode("one two")
    batch = {
        "mel": rng.normal(size=(2, 80, 40)).astype(np.float32),
        "inputs": np.array([[cfg.sos, *ids]] * 2),
        "targets": np.array([[*ids, cfg.eos]] * 2),
        "weights": np.ones((2, len(ids) + 1), np.float32),
    }
    kw = dict(model=cfg, dtype="float32", dropout=0.0, ctc_weight=0.3, spec_augment=False)
    key = jax.random.key(3)
    plain = family.token_stats(params, None, batch, rng=key, **kw)["loss_sum"]
    warped = family.token_stats(params, None, batch, rng=key, freq_warp=0.2, **kw)["loss_sum"]
    no_key = family.token_stats(params, None, batch, rng=None, freq_warp=0.2, **kw)["loss_sum"]
    assert float(warped) != float(plain)  # the warp changed what the model heard
    assert float(no_key) == float(plain)  # evaluation (no key) is never warped
