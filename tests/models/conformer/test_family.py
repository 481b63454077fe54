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
