"""Score a PQM run: full precision, NF4, NF4 + speaker-independent LoRA and PQM, per speaker.

    python evaluate.py --workdir /tmp/pqm_demo [--beam_size 3] [--max_repeats 0]
    python evaluate.py --config configs/demo.py --workdir /tmp/pqm_demo   # train first if needed

Writes DIR/report.json, DIR/report.md (the table, also printed), DIR/report.png (per-speaker WER
bars) and DIR/transcripts.jsonl.
"""

from __future__ import annotations

import functools
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pqm_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "train this config first (resumes)")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run folder (train.py --workdir)")
_SYSTEMS = flags.DEFINE_list("systems", ["fp32", "nf4", "nf4_si", "pqm"], "systems to score")
_BEAM = flags.DEFINE_integer("beam_size", 1, "1 = greedy")
_BATCH = flags.DEFINE_integer("batch_size", 8, "utterances per decoding call")
_REPEATS = flags.DEFINE_integer("max_repeats", 4, "repetition guard (0 = off)")
_NORM = flags.DEFINE_enum("normalizer", "auto", ["auto", "english", "digits"], "text normaliser")
_SPEAKERS = flags.DEFINE_list("speakers", None, "score only these speakers")
_FULL = flags.DEFINE_bool(
    "full_window_baselines", True, "also score fp32 and NF4 on 30 s windows (short-window runs)"
)
_STRICT = flags.DEFINE_bool("strict", False, "stop at the first bad input item")
_PARTIAL = flags.DEFINE_bool(
    "partial", False, "score an unfinished run (the report says what is missing)"
)
_DIST = flags.DEFINE_bool(
    "distributed", False, "run as one of several processes (jax.distributed; see the README)"
)
_COORD = flags.DEFINE_string("coordinator_address", "", "with --distributed: HOST:PORT")
_NPROC = flags.DEFINE_integer("num_processes", 0, "with --distributed (0 = auto-detect)")
_PID = flags.DEFINE_integer("process_id", -1, "with --distributed (-1 = auto-detect)")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str], prog: str = "evaluate.py") -> None:
    """The program; `prog` is how its messages name it (`pqm evaluate` passes its own)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from pqm_jax import multihost
    from pqm_jax.data import issues
    from pqm_jax.eval import report, run
    from pqm_jax.run import config as config_lib
    from pqm_jax.run import workdir as workdir_lib

    workdir = pathlib.Path(_WORKDIR.value)
    if _DIST.value:
        from pqm_jax.run import pipeline

        spec = config_lib.DistributedSpec(
            enabled=True,
            coordinator_address=_COORD.value,
            num_processes=_NPROC.value,
            process_id=_PID.value,
        )
        pipeline.init_distributed(spec)
    try:
        if _CONFIG.value is not None:
            from pqm_jax.run import pipeline

            config = config_lib.from_dict(_CONFIG.value)
            pipeline.run_pipeline(config, workdir, progress=True)
        if not workdir_lib.Workdir(workdir).config.is_file():
            sys.exit(f"{prog}: {workdir} holds no run; train first (or pass --config)")
        options = run.EvalOptions(
            systems=tuple(_SYSTEMS.value),
            beam_size=_BEAM.value,
            batch_size=_BATCH.value,
            max_repeats=_REPEATS.value,
            normalizer=_NORM.value,
            speakers=tuple(_SPEAKERS.value) if _SPEAKERS.value else None,
            full_window_baselines=_FULL.value,
            partial=_PARTIAL.value,
        )
        problems = issues.InputReport(strict=_STRICT.value)
        rep = run.evaluate(workdir, options, report=problems)
    except (
        config_lib.ConfigError,
        KeyError,
        ValueError,
        FileNotFoundError,
        run.IncompleteRunError,
        issues.InputError,
        workdir_lib.WorkdirLocked,
    ) as e:
        lost = multihost.lost_peer(e)
        if lost is not None:
            multihost.stop(f"{prog}: {lost}")
        sys.exit(f"{prog}: {e}")
    multihost.mark_done()
    if not multihost.primary():
        return  # process 0 reports
    print(report.markdown(rep))
    print(f"input: {problems.summary()}")
    paths = workdir_lib.Workdir(workdir)
    print(f"report: {', '.join(str(paths.report(kind)) for kind in workdir_lib.REPORT)}")


def entry(prog: str = "python evaluate.py", argv: list[str] | None = None) -> None:
    """Runs the program as a command (absl flags from `argv`, default sys.argv)."""
    name = prog.removeprefix("python ")
    cli.run(
        functools.partial(main, prog=name),
        prog=name,
        usage="python evaluate.py --workdir DIR".replace("python evaluate.py", prog),
        workdir=lambda: _WORKDIR.value,
        argv=argv,
    )
