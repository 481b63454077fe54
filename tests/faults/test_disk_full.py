"""A full disk: one line naming what could not be written, and that rerunning resumes.

Uses a real 1 MB tmpfs where this machine lets us mount one (CI runs as root); elsewhere a
simulated ENOSPC from the WAV writer."""

import errno
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pqm_jax import cli
from pqm_jax.data import audio

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mount, ok
    finally:
        if ok:
            subprocess.run(["umount", str(mount)], check=False)


def test_train_py_on_a_full_disk_says_so_in_one_line(full_disk, monkeypatch):
    mount, real = full_disk
    if not real:
        pytest.skip("tmpfs cannot be mounted here; see the simulated test below")
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={ROOT / 'configs' / 'tiny_test.py'}",
        f"--workdir={mount / 'run'}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode != 0
    assert "train.py: no space left on the device writing" in out.stderr, out.stderr[-2000:]
    assert "rerun the same command" in out.stderr and "Traceback" not in out.stderr


def test_the_wav_writer_turns_libsndfile_errors_on_a_full_disk_into_enospc(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise soundfile.LibsndfileError(2, "System error.")

    monkeypatch.setattr(soundfile, "write", fail)
    monkeypatch.setattr(audio.shutil, "disk_usage", lambda p: type("U", (), {"free": 10})())
    with pytest.raises(OSError) as caught:
        audio.write_wav(tmp_path / "a.wav", np.zeros(16000, np.float32))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("a.wav")
    wrapped = RuntimeError("orbax failed")
    wrapped.__cause__ = caught.value
    msg = cli.disk_full_message("train.py", cli.disk_full(wrapped), tmp_path)
    assert "no space left on the device writing" in msg and "a.wav" in msg
