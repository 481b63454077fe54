"""The paper's Conformer setting on LibriSpeech, for accelerators: ESPnet's LibriSpeech-100
Conformer sizes trained from scratch on train-clean-100, then PQM on the paper's 10
train-clean-360 speakers.

Encoder 12 x 256 (4 heads, feed-forward 1024, kernel 31), decoder 6 layers, CTC weight 0.3,
characters instead of ESPnet's 5000 BPE units, SpecAugment, Adam with 25k warm-up steps as
ESPnet (peak 2e-3), 30 s fixed windows (longer utterances are skipped and reported). The
LoRA stages follow `configs/librispeech.py`. Point the roots at your copies:

    python train.py --config configs/conformer_librispeech100.py --workdir runs/cf_ls100 \
        --config.data.root=/data/LibriSpeech/train-clean-360 \
        --config.data.si_root=/data/LibriSpeech/train-clean-100
"""

import pathlib

from pqm_jax.run import config as config_lib


def get_config():
    epochs, warmup = 70, 25000
    c = config_lib.load_file(pathlib.Path(__file__).with_name("librispeech.py"))
    # same speakers, splits and LoRA stages as the Whisper setup
    c.model.name = "conformer"
    c.model.d_model = 256
    c.model.layers = 12
    c.model.heads = 4
    c.model.decoder_layers = 6
    c.model.kernel_size = 31
    c.model.ctc_weight = 0.3
    c.model.audio_window_s = 30.0
    c.model.max_tokens = 640
    c.model.dtype = "bfloat16"
    c.pretrain.steps = epochs * 28539 // 32  # train-clean-100 has 28,539 utterances
    c.pretrain.batch_size = 32
    c.pretrain.eval_batch_size = 32
    c.pretrain.eval_every = 5000
    c.pretrain.ckpt_every = 1000
    c.pretrain.dropout = 0.1
    c.pretrain.optim.learning_rate = 2e-3
    c.pretrain.optim.warmup_steps = warmup
    c.pretrain.optim.schedule = "cosine"
    return c
