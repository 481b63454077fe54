"""A run's backbone: the full-precision model of `model.*`, and the frozen quantised base."""

from __future__ import annotations

import shutil
import warnings
from typing import Any

import jax

from pqm_jax import checkpoint, multihost
from pqm_jax.models import family as family_lib
from pqm_jax.quant import tree as qtree
from pqm_jax.run import config as config_lib
from pqm_jax.run import workdir as workdir_lib


def load(config: config_lib.RunConfig, workdir: workdir_lib.Workdir) -> tuple[dict, Any, Any]:
    """Full-precision (params, model config, tokenizer) of `config.model` (nothing downloads);
    a model this run trained from scratch is read from `<workdir>/pretrain`."""
    spec = config.model
    params, cfg, tokenizer = spec.family.load(spec, seed=config.seed, folder=workdir.pretrain)
    qtree.check_finite(params, spec.path or spec.name)
    return params, cfg, tokenizer


def quantize(params: dict, spec: family_lib.ModelSpec) -> dict:
    """The frozen base: `spec.targets()` quantised with `spec.quant` (or unchanged)."""
    if spec.quant == "none":
        return params
    predicate = qtree.match_any(spec.targets())
    return qtree.quantize_tree(params, predicate, spec.quant, **spec.quant_options())


def quantized(config: config_lib.RunConfig, workdir: workdir_lib.Workdir) -> tuple[dict, Any, Any]:
    """(quantised base, full model config, tokenizer): restored from `ckpt/base`, or quantised
    now and saved there once."""
    params, cfg, tokenizer = load(config, workdir)
    path = workdir.ckpt("base")
    abstract = jax.eval_shape(lambda p: quantize(p, config.model), params)
    multihost.barrier("pqm-base")  # every process takes the same branch below
    if path.exists():
        try:
            return checkpoint.restore(path, {"base": abstract})["base"], cfg, tokenizer
        except checkpoint.CorruptCheckpointError as e:
            warnings.warn(f"quantising again: {e}", checkpoint.CheckpointWarning, stacklevel=2)
            if jax.process_index() == 0:
                shutil.rmtree(path)
    base = quantize(params, config.model)
    checkpoint.save(path, {"base": checkpoint.numpy_tree(base)})  # host arrays: any process count
    return base, cfg, tokenizer
