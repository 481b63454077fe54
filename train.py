"""Train PQM: quantise the base, train speaker-independent LoRA, adapt every target speaker.

    python train.py --config configs/demo.py --workdir /tmp/pqm_demo [--config.stage3.epochs=5]

Rerunning the same command resumes an interrupted run from its last checkpoint. Results land in
the work folder (see `pqm_jax.train.pipeline`); read them with `pqm_jax.train.results.load`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file of the run")
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics and results")
_PROGRESS = flags.DEFINE_bool("progress", True, "show progress bars")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from pqm_jax.train import config as config_lib
    from pqm_jax.train import pipeline

    try:
        config = config_lib.from_dict(_CONFIG.value)
        pipeline.init_distributed(config.distributed)
        summary = pipeline.run_pipeline(config, _WORKDIR.value, progress=_PROGRESS.value)
    except config_lib.ConfigError as e:
        sys.exit(f"train.py: bad config: {e}")
    stage3 = summary["stage3"] or {}
    speakers = stage3.get("speakers", {})
    print(f"stage 2: {json.dumps(summary['stage2'])}")
    for name, row in sorted(speakers.items()):
        print(
            f"stage 3: {name}: dev token accuracy {row['start_dev_accuracy']:.4f} -> "
            f"{row['best_dev_accuracy']:.4f} (best at step {row['best_step']} of {row['steps']})"
        )
    print(f"results in {_WORKDIR.value}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors (a typo in --config.x=y is not a traceback)."""
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path is not None and not os.path.isfile(path.split(":", 1)[0]):
            sys.exit(f"train.py: config file {path} does not exist (see configs/*.py)")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"train.py: {e}\nusage: python train.py --config CONFIG.py --workdir DIR")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = str(e).replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
        sys.exit(f"train.py: bad config override: {message}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
