"""Two runs on one work folder: the second says who holds it and exits; the lock dies with its
holder (kill -9 included, since it is an flock)."""

import os
import pathlib
import subprocess
import sys

import pytest

from pqm_jax.run import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    wd = workdir_lib.Workdir(tmp_path / "run")
    with workdir_lib.lock(wd):
        with pytest.raises(workdir_lib.WorkdirLocked, match=rf"in use by pid {os.getpid()} on"):
            with workdir_lib.lock(wd):
                pass
    with workdir_lib.lock(wd):  # released at the end of the block
        pass


def test_train_py_on_a_busy_workdir_exits_with_one_line(tmp_path):
    wd = workdir_lib.Workdir(tmp_path / "run")
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={ROOT / 'configs' / 'tiny_test.py'}",
        f"--workdir={wd.root}",
    ]
    with workdir_lib.lock(wd):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode != 0
    assert f"is in use by pid {os.getpid()}" in out.stderr and "Traceback" not in out.stderr
    assert not wd.config.exists()  # nothing of the run was written


def test_a_killed_holder_frees_the_folder(tmp_path):
    wd = workdir_lib.Workdir(tmp_path / "run")
    code = (
        "import sys, time; from pqm_jax.run import workdir as w\n"
        f"ctx = w.lock(w.Workdir(__import__('pathlib').Path({str(wd.root)!r})))\n"
        "ctx.__enter__(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lib.WorkdirLocked, match=rf"pid {holder.pid}"):
            with workdir_lib.lock(wd):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with workdir_lib.lock(wd):
        pass
