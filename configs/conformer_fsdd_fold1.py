"""Fold 1 of `configs/conformer_fsdd_loso.py`: targets `FOLDS[0]`, the other three speakers in the pool."""

import pathlib

from pqm_jax.run import config as config_lib


def get_config():
    path = pathlib.Path(__file__).with_name("conformer_fsdd_loso.py")
    return config_lib.load_module(path).get_config(fold=0)
