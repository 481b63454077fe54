"""Whisper tiny.en on the Conformer's synthetic digit voices: the side-by-side of the two models.

The same target voices, utterances, splits, stage-2 pool and stage-3 schedule as
`configs/conformer_synth.py` (pass its rendered audio with data.root to skip rendering it
again); only the backbone differs: NF4 Whisper tiny.en with LoRA on every attention projection
instead of the Conformer trained from scratch on that pool.

    python train.py --config configs/whisper_digits.py --workdir runs/whisper_digits \
        --config.data.root=runs/conformer_synth/data/synth
    python evaluate.py --workdir runs/whisper_digits --beam_size 4
"""

import pathlib

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.load_file(pathlib.Path(__file__).with_name("conformer_synth.py"))
    c.model.name = "tiny.en"
    c.model.max_tokens = 24
    c.stage2.optim.learning_rate = 1e-4
    return c
