"""The Conformer as a recogniser of real speech: FSDD with speakers left out (issue 17).

No target speaker is heard before its own stage 3. Each fold pretrains a Conformer AED from
scratch on a pool of three real FSDD speakers (300 joined 4-digit utterances each from takes
5-49, dev from takes 0-4) plus 40 sampled espeak-ng voices reading digits (50 each), every
training utterance with two augmented copies (speed 0.9/1.0/1.1, 4 kHz telephone band, a
synthetic room with RT60 0.1-0.5 s, coloured noise at 10-30 dB SNR) and SpecAugment; then NF4,
stage 2 on the same pool and stage 3 on the fold's three held-out speakers under the FSDD
protocol (80 adaptation + 20 dev + 50 test utterances a speaker). Two folds make every FSDD
speaker a target once:

    python train.py --config configs/conformer_fsdd_fold1.py --workdir runs/conformer_fsdd_fold1
    python train.py --config configs/conformer_fsdd_fold2.py --workdir runs/conformer_fsdd_fold2
    python evaluate.py --workdir runs/conformer_fsdd_fold1 --beam_size 4
    python evaluate.py --workdir runs/conformer_fsdd_fold2 --beam_size 4
    python scripts/merge_folds.py runs/conformer_fsdd_fold1 runs/conformer_fsdd_fold2 \
        --out results/conformer_fsdd.json

Sized for a 2-core CPU: encoder 4 x 144 (4 heads, kernel 15), decoder 2 layers, characters, joint
CTC/attention (CTC weight 0.3), 4 s windows; pretraining 2,000 steps of batch 16 took 58 min (fold
1) and 67 min (fold 2) alone there at 1.7-2.0 s a step, stages 2 and 3 about 6 min, evaluation
with beam 4 about 1.5 min. Measured on 2026-12-03 (2,000 steps, freq_warp 0.12, 600 pool
utterances), both folds merged: FSDD full precision 22.3%, NF4 21.3%, NF4+SI 21.6%, PQM 6.7%
(README; results/conformer_fsdd.json). 1,500 steps gave 30.1% / 29.8% / 28.3% / 7.1% (2026-12-02).
"""

import pathlib

from pqm_jax.run import config as config_lib

SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FOLDS = (("george", "lucas", "theo"), ("jackson", "nicolas", "yweweler"))


def get_config(fold: int = 0):
    c = config_lib.load_file(pathlib.Path(__file__).with_name("conformer_synth.py"))
    c.model.d_model = 144
    targets = FOLDS[fold]
    c.data.source = "fsdd"
    c.data.root = ""  # $PQM_SHARED_DATA/fsdd or the nearest shared/data/fsdd
    c.data.text = "digits"
    c.data.speakers = targets
    c.data.si_speakers = tuple(s for s in SPEAKERS if s not in targets)
    c.data.fsdd_counts = (80, 20, 50)
    c.data.fsdd_pool_counts = (600, 25)
    c.data.si_voices = 40
    c.data.si_counts = (50, 2)
    c.data.augment = ("speed", "narrowband", "reverb", "noise")
    c.data.augment_copies = 2
    c.pretrain.steps = 2000
    c.pretrain.freq_warp = 0.12
    c.pretrain.eval_every = 100
    c.stage2.steps = 150
    c.stage3.epochs = 15
    return c
