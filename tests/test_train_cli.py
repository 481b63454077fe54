"""train.py: clear errors for bad configs, a smoke run, and a real SIGKILL + resume (slow)."""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pqm_jax.run import metrics, results
from pqm_jax.run import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_test.py")


def _cli(workdir, *extra, **kwargs):
    cmd = [sys.executable, str(ROOT / "train.py"), f"--config={TINY}", f"--workdir={workdir}"]
    return subprocess.Popen(
        [*cmd, "--noprogress", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.stage3.optim.accumulate=4", "bad config: stage3.batch_size=2 is not divisible"),
        ("--config.model.quant=nf3", "bad config: model.quant='nf3' is not one of"),
        ("--config.stage2.epoch=3", "epoch"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    proc = _cli(tmp_path, override)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert message in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_in_process(cli, tmp_path, capsys):
    from absl import flags

    flags.FLAGS([str(ROOT / "train.py"), f"--config={TINY}", f"--workdir={tmp_path}"])
    try:
        cli.main(["train.py"])
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr().out
    assert "stage 3: en-029: dev token accuracy" in out
    assert sorted(results.load(tmp_path).speakers()) == ["en-029", "en-gb-scotland", "en-us"]


def _stage3_started(workdir: pathlib.Path) -> bool:
    rows = metrics.read_jsonl(workdir / workdir_lib.METRICS)
    return any(r.get("stage") == "stage3" for r in rows)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_run):
    env = dict(os.environ)  # the same 8 simulated devices as the session's uninterrupted run
    ref, killed = tiny_run, tmp_path / "killed"
    proc = _cli(killed, env=env)
    deadline = time.time() + 600
    while not _stage3_started(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    proc = _cli(killed, env=env)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    a, b = results.load(ref), results.load(killed)
    assert a.speakers() == b.speakers()
    for s in a.speakers():
        for x, y in zip(jax.tree.leaves(a.speaker_lora(s)), jax.tree.leaves(b.speaker_lora(s))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    attempts = {r.get("attempt") for r in metrics.read_jsonl(killed / workdir_lib.METRICS)}
    assert attempts == {1, 2}
