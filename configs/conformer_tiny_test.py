"""Tiny Conformer smoke/test run: pretrain a 1-layer Conformer, quantise, stage 2, stage 3.

Run: `python train.py --config configs/conformer_tiny_test.py --workdir /tmp/pqm_conformer_tiny`.
"""

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.model.name = "conformer"
    c.model.d_model = 32
    c.model.layers = 1
    c.model.heads = 2
    c.model.decoder_layers = 1
    c.model.kernel_size = 7
    c.model.audio_window_s = 4.0
    c.model.max_tokens = 32
    c.lora.rank = 2
    c.lora.alpha = 4.0
    c.data.source = "synth"
    c.data.text = "digits"
    c.data.voices = ("en-us", "en-029")
    c.data.counts = (4, 2, 2)
    c.data.si_voices = 2
    c.data.si_counts = (6, 2)
    c.mesh.data = 2
    c.pretrain.steps = 4
    c.pretrain.batch_size = 4
    c.pretrain.eval_batch_size = 2
    c.pretrain.eval_every = 2
    c.pretrain.ckpt_every = 1
    c.pretrain.optim.warmup_steps = 2
    c.stage2.steps = 2
    c.stage2.batch_size = 4
    c.stage2.eval_batch_size = 2
    c.stage3.epochs = 2
    c.stage3.batch_size = 2
    c.stage3.eval_batch_size = 2
    return c
