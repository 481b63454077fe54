"""The embedded demo: Whisper tiny.en (NF4) personalised to synthetic espeak-ng speakers.

Four target voices (the PyTorch reference's: en-gb-scotland, en-029, en-gb+m7, en-us+f2) and a
speaker-independent pool of other sampled voices, all reading LibriSpeech dev-clean sentences
(generated sentences when the text is absent). Sized to finish quantise -> stage 2 -> stage 3
in a few minutes on a 2-core CPU, leaving the rest of a 20-minute budget to evaluation; the
audio window is cut to fit the sentences (evaluate with the same window).

    python train.py --config configs/demo.py --workdir /tmp/pqm_demo
"""

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.model.name = "tiny.en"
    c.model.quant = "nf4"
    c.model.audio_window_s = 8.0
    c.model.max_tokens = 48
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.data.source = "synth"
    c.data.counts = (24, 8, 30)
    c.data.si_voices = 12
    c.data.si_counts = (8, 2)
    c.data.min_words = 6
    c.data.max_words = 16
    c.mesh.data = -1
    c.stage2.epochs = 2
    c.stage2.batch_size = 8
    c.stage2.eval_batch_size = 8
    c.stage2.ckpt_every = 4
    c.stage2.optim.name = "adamw"
    c.stage2.optim.learning_rate = 5e-4
    c.stage2.optim.weight_decay = 0.01
    c.stage3.epochs = 3
    c.stage3.batch_size = 4
    c.stage3.eval_batch_size = 8
    c.stage3.ckpt_every = 3
    c.stage3.optim.name = "adamw"
    c.stage3.optim.learning_rate = 1e-3
    c.stage3.optim.weight_decay = 0.01
    c.stage3.optim.schedule = "exponential"
    c.stage3.optim.decay_rate = 0.9
    return c
