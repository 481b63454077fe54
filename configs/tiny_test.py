"""Tiny smoke/test run: a small random Whisper, a few short synthetic utterances, seconds a stage.

Run on one device: `python train.py --config configs/tiny_test.py --workdir /tmp/pqm_tiny
--config.mesh.data=1`. As committed it shards every batch over two devices (mesh.data=2), as the
tests run it on 8 simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.seed = 0
    c.model.name = "random"
    c.model.d_model = 64
    c.model.layers = 1
    c.model.heads = 2
    c.model.audio_window_s = 2.0
    c.model.max_tokens = 16
    c.lora.rank = 2
    c.lora.alpha = 4.0
    c.lora.dropout = 0.1
    c.data.source = "synth"
    c.data.voices = ("en-us", "en-gb-scotland", "en-029")
    c.data.counts = (5, 2, 2)
    c.data.si_voices = 2
    c.data.si_counts = (4, 2)
    c.data.min_words = 1
    c.data.max_words = 3
    c.mesh.data = 2
    c.stage2.steps = 3
    c.stage2.batch_size = 4
    c.stage2.eval_batch_size = 2
    c.stage2.eval_every = 2
    c.stage2.ckpt_every = 1
    c.stage2.optim.learning_rate = 1e-3
    c.stage3.epochs = 2
    c.stage3.batch_size = 2
    c.stage3.eval_batch_size = 2
    c.stage3.chunk_speakers = 2
    c.stage3.ckpt_every = 1
    c.stage3.optim.learning_rate = 1e-2
    return c
