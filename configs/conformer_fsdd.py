"""PQM of the synthetic-voice Conformer on FSDD's six real speakers, beside `configs/fsdd.py`.

The backbone is the Conformer trained from scratch by `configs/conformer_synth.py` (it has only
ever heard espeak-ng voices): model.path names its pretrain/ folder, whose model.json and
tokens.txt decide the architecture and vocabulary. Data, LoRA and schedules follow the Whisper
FSDD setup (80 adaptation + 20 dev + 50 test utterances of 4 joined digits per speaker; stage 2
on 16 synthetic digit voices; stage 3 AdamW lr 1e-3, batch 8, here 15 epochs), with LoRA on the Conformer's
attention projections and 4 s windows (the 0.15% of joined utterances longer than 4 s are
skipped and reported).

    python train.py --config configs/conformer_synth.py --workdir runs/conformer_synth
    python train.py --config configs/conformer_fsdd.py --workdir runs/conformer_fsdd \
        --config.model.path=runs/conformer_synth/pretrain
    python evaluate.py --workdir runs/conformer_fsdd --beam_size 4
"""

from pqm_jax.models import conformer
from pqm_jax.train import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.model.name = "conformer"
    c.model.path = "runs/conformer_synth/pretrain"
    c.model.ctc_weight = 0.3
    c.model.audio_window_s = 4.0
    c.model.max_tokens = 32
    c.lora.targets = conformer.ATTENTION_TARGETS
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.data.source = "fsdd"
    c.data.root = ""  # $PQM_SHARED_DATA/fsdd or the nearest shared/data/fsdd
    c.data.fsdd_counts = (80, 20, 50)
    c.data.si_voices = 16
    c.data.si_counts = (24, 4)
    c.stage2.enabled = True
    c.stage2.epochs = 2
    c.stage2.batch_size = 8
    c.stage2.eval_batch_size = 8
    c.stage2.optim.name = "adamw"
    c.stage2.optim.learning_rate = 5e-4
    c.stage2.optim.weight_decay = 0.01
    c.stage3.epochs = 15  # at 5 every speaker's dev accuracy was still rising at the last step
    c.stage3.batch_size = 8
    c.stage3.eval_batch_size = 10
    c.stage3.optim.name = "adamw"
    c.stage3.optim.learning_rate = 1e-3
    c.stage3.optim.weight_decay = 0.01
    c.stage3.optim.schedule = "constant"
    return c
