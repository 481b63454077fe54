"""Train PQM: quantise the base, train speaker-independent LoRA, adapt every target speaker.

    python train.py --config configs/demo.py --workdir /tmp/pqm_demo [--config.stage3.epochs=5]

Rerunning the same command resumes an interrupted run from its last checkpoint. Results land in
the work folder (see `pqm_jax.run.pipeline`); read them with `pqm_jax.run.results.load`.
"""

from __future__ import annotations

import functools
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pqm_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file of the run")
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics and results")
_PROGRESS = flags.DEFINE_bool("progress", True, "show progress bars")
_STRICT = flags.DEFINE_bool("strict", False, "stop at the first bad input item (= data.strict)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str], prog: str = "train.py") -> None:
    """The program; `prog` is how its messages name it (`pqm train` passes its own)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from pqm_jax import multihost
    from pqm_jax.data import issues
    from pqm_jax.quant import tree as qtree
    from pqm_jax.run import config as config_lib
    from pqm_jax.run import pipeline, stages
    from pqm_jax.run import workdir as workdir_lib

    try:
        values = _CONFIG.value.to_dict()
        if _STRICT.value:
            values.setdefault("data", {})["strict"] = True
        config = config_lib.from_dict(values)
        pipeline.init_distributed(config.distributed)
        summary = pipeline.run_pipeline(config, _WORKDIR.value, progress=_PROGRESS.value)
    except config_lib.ConfigError as e:
        sys.exit(f"{prog}: bad config: {e}")
    except (workdir_lib.WorkdirLocked, stages.NonFiniteLoss, qtree.NonFiniteWeights) as e:
        sys.exit(f"{prog}: {e}")
    except issues.InputError as e:
        sys.exit(f"{prog}: bad input: {e}; fix or remove it (or run without --strict)")
    multihost.mark_done()
    if not multihost.primary():
        return  # process 0 reports for the run
    stage3 = summary["stage3"] or {}
    speakers = stage3.get("speakers", {})
    print(f"stage 2: {json.dumps(summary['stage2'])}")
    for name, row in sorted(speakers.items()):
        print(
            f"stage 3: {name}: dev token accuracy {row['start_dev_accuracy']:.4f} -> "
            f"{row['best_dev_accuracy']:.4f} (best at step {row['best_step']} of {row['steps']})"
        )
    print(f"input: {summary['input_problems']}")
    print(f"results in {_WORKDIR.value}")


def entry(prog: str = "python train.py", argv: list[str] | None = None) -> None:
    """Runs the program as a command (absl flags from `argv`, default sys.argv)."""
    name = prog.removeprefix("python ")
    cli.run(
        functools.partial(main, prog=name),
        prog=name,
        usage="python train.py --config CONFIG.py --workdir DIR".replace("python train.py", prog),
        workdir=lambda: _WORKDIR.value,
        argv=argv,
    )
