"""A small Conformer AED trained from scratch on synthetic voices, then PQM on held-out voices.

The CPU-sized counterpart of the paper's Conformer experiment: 40 sampled espeak-ng voices read
runs of four digit words (the pretraining and stage-2 pool); the four reference voices, never
seen in the pool, are the target speakers. Encoder 4 x 96 (4 heads, kernel 15), decoder 2
layers, character vocabulary, joint CTC/attention (CTC weight 0.3), 4 s windows. The trained
model lands in <workdir>/pretrain, which `configs/conformer_fsdd.py` reuses (model.path).

    python train.py --config configs/conformer_synth.py --workdir runs/conformer_synth
    python evaluate.py --workdir runs/conformer_synth --beam_size 4
"""

from pqm_jax.run import config as config_lib


def get_config():
    c = config_lib.defaults()
    c.model.name = "conformer"
    c.model.d_model = 96
    c.model.layers = 4
    c.model.heads = 4
    c.model.decoder_layers = 2
    c.model.kernel_size = 15
    c.model.ctc_weight = 0.3
    c.model.audio_window_s = 4.0
    c.model.max_tokens = 32
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.data.source = "synth"
    c.data.text = "digits"
    c.data.counts = (40, 10, 25)
    c.data.si_voices = 40
    c.data.si_counts = (100, 3)
    c.pretrain.steps = 1200
    c.pretrain.batch_size = 16
    c.pretrain.eval_batch_size = 24
    c.pretrain.eval_every = 300
    c.pretrain.ckpt_every = 100
    c.stage2.steps = 120
    c.stage2.batch_size = 16
    c.stage2.eval_batch_size = 24
    c.stage2.eval_every = 60
    c.stage2.optim.name = "adam"
    c.stage2.optim.learning_rate = 5e-4
    c.stage3.epochs = 5
    c.stage3.batch_size = 8
    c.stage3.eval_batch_size = 10
    c.stage3.optim.name = "adamw"
    c.stage3.optim.learning_rate = 1e-3
    c.stage3.optim.weight_decay = 0.01
    c.stage3.optim.schedule = "constant"
    return c
