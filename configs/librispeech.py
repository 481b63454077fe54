"""The paper's LibriSpeech setup: 10 train-clean-360 speakers, stage 2 on train-clean-100.

Each target speaker's utterances are split 40% adaptation / 20% dev / 40% test. Stage 2: Adam
lr 1e-5, batch 16, 10 epochs, LoRA r 4 / alpha 64 on every attention projection. Stage 3: lr
1e-3 decayed x0.9 per epoch, 10 epochs, batch 8, selection by dev token accuracy. Full 30 s
windows, as the paper. Point the roots at your copies:

    python train.py --config configs/librispeech.py --workdir /tmp/pqm_ls \
        --config.data.root=/data/LibriSpeech/train-clean-360 \
        --config.data.si_root=/data/LibriSpeech/train-clean-100
"""

from pqm_jax.run import config as config_lib

PAPER_SPEAKERS = ("115", "210", "2368", "3389", "3615", "479", "492", "525", "6553", "829")


def get_config():
    c = config_lib.defaults()
    c.model.name = "tiny.en"
    c.model.audio_window_s = 30.0
    c.model.max_tokens = 224
    c.lora.rank = 4
    c.lora.alpha = 64.0
    c.data.source = "librispeech"
    c.data.root = "/work/shared/data/LibriSpeech/train-clean-360"
    c.data.si_root = "/work/shared/data/LibriSpeech/train-clean-100"
    c.data.speakers = PAPER_SPEAKERS
    c.data.split = (0.4, 0.2, 0.4)
    c.data.si_dev_utterances = 200
    c.stage2.epochs = 10
    c.stage2.batch_size = 16
    c.stage2.eval_batch_size = 16
    c.stage2.eval_every = 2000
    c.stage2.ckpt_every = 500
    c.stage2.optim.name = "adam"
    c.stage2.optim.learning_rate = 1e-5
    c.stage3.epochs = 10
    c.stage3.batch_size = 8
    c.stage3.eval_batch_size = 8
    c.stage3.ckpt_every = 20
    c.stage3.optim.name = "adam"
    c.stage3.optim.learning_rate = 1e-3
    c.stage3.optim.schedule = "exponential"
    c.stage3.optim.decay_rate = 0.9
    return c
