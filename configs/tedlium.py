"""The paper's TED-LIUM 3 setup: 16 talks as speakers (40/20/40 split), stage 2 on the others.

Talks are read from a folder with stm/ and sph/ (e.g. TEDLIUM_release-3/legacy/test and dev
hold 19 talks; list the 16 you use in data.speakers, or leave it empty for every talk under
root). Hyper-parameters as the LibriSpeech config.

    python train.py --config configs/tedlium.py --workdir /tmp/pqm_ted \
        --config.data.root=/data/TEDLIUM_release-3/legacy \
        --config.data.si_root=/data/TEDLIUM_release-3/legacy/train
"""

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.model.name = "tiny.en"
    c.model.audio_window_s = 30.0
    c.model.max_tokens = 224
    c.lora.rank = 4
    c.lora.alpha = 64.0
    c.data.source = "tedlium"
    c.data.root = "/work/shared/data/TEDLIUM_release-3/legacy"
    c.data.si_root = "/work/shared/data/TEDLIUM_release-3/legacy/train"
    c.data.speakers = ()
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
