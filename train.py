"""Train PQM: quantise the base, train speaker-independent LoRA, adapt every target speaker.

    python train.py --config configs/demo.py --workdir /tmp/pqm_demo [--config.stage3.epochs=5]

Rerunning the same command resumes an interrupted run from its last checkpoint. Results land in
the work folder (see `pqm_jax.run.pipeline`); read them with `pqm_jax.run.results.load`.
"""

from pqm_jax.commands.train import (
    entry,
    main,  # noqa: F401  (tests load this file and call main)
)

if __name__ == "__main__":
    entry()
