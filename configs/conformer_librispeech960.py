"""`configs/conformer_librispeech100.py` pretrained on all 960 h of LibriSpeech (give data.si_root
a manifest or a folder holding train-clean-100, train-clean-360 and train-other-500 speakers;
the 10 target speakers are never in the pool).

    python train.py --config configs/conformer_librispeech960.py --workdir runs/cf_ls960 \
        --config.data.root=/data/LibriSpeech/train-clean-360 \
        --config.data.si_root=/data/LibriSpeech/train-960
"""

import pathlib

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.load_file(pathlib.Path(__file__).with_name("conformer_librispeech100.py"))
    c.pretrain.steps = 35 * 281241 // 64  # 281,241 utterances in the 960 h
    c.pretrain.batch_size = 64
    c.pretrain.eval_batch_size = 64
    c.model.d_model = 512
    c.model.heads = 8
    return c
