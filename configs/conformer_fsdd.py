"""PQM of the synthetic-voice Conformer on FSDD's six real speakers, beside `configs/fsdd.py`.

The backbone is the Conformer trained from scratch by `configs/conformer_synth.py` (it has only
ever heard espeak-ng voices): model.path names its pretrain/ folder, whose model.json and
tokens.txt decide the architecture and vocabulary. Data, stage 2 and stage 3 are the Whisper
FSDD setup's (80 adaptation + 20 dev + 50 test utterances of 4 joined digits per speaker; stage
2 on 16 synthetic digit voices; stage 3 AdamW lr 1e-3, batch 8), except 15 stage-3 epochs
instead of 3, LoRA on the Conformer's attention projections, and 4 s windows (the 0.15% of
joined utterances longer than 4 s are skipped and reported).

    python train.py --config configs/conformer_synth.py --workdir runs/conformer_synth
    python train.py --config configs/conformer_fsdd.py --workdir runs/conformer_fsdd \
        --config.model.path=runs/conformer_synth/pretrain
    python evaluate.py --workdir runs/conformer_fsdd --beam_size 4
"""

import pathlib

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.load_file(pathlib.Path(__file__).with_name("fsdd.py"))
    c.model.name = "conformer"
    c.model.path = "runs/conformer_synth/pretrain"
    c.model.ctc_weight = 0.3
    c.model.audio_window_s = 4.0
    c.model.max_tokens = 32
    c.stage3.epochs = 15  # at 5 every speaker's dev accuracy was still rising at the last step
    return c
