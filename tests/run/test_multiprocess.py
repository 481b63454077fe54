"""Two real processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) train and score a
tiny run as one: a process killed mid-run stops the other with a message saying how to resume,
relaunching both resumes, and the adapters equal a one-process run over the same 2 devices."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pqm_jax.run import results

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ["--config", str(ROOT / "configs" / "tiny_test.py"), "--config.mesh.data=2"]
SYSTEMS = ("nf4_si", "pqm")
WAIT_S = 420  # every process of every launch ends by then, or the test fails


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: str, args: list[str], *, flags) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i in range(2):
        cmd = [sys.executable, str(ROOT / script), *args, *flags(f"127.0.0.1:{port}", i)]
        procs.append(
            subprocess.Popen(
                cmd, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def _train_flags(address: str, i: int) -> list[str]:
    return [
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address={address}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}",
        "--config.distributed.timeout_s=20",
        "--progress=false",
    ]


def _eval_flags(address: str, i: int) -> list[str]:
    return [
        "--distributed",
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
    ]


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    deadline = time.monotonic() + WAIT_S
    out = []
    try:
        for p in procs:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, text))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _assert_ok(outcome: list[tuple[int, str]]) -> None:
    for i, (rc, text) in enumerate(outcome):
        assert rc == 0, f"process {i} exited {rc}:\n{text[-3000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run in one process with the same 2 devices, trained and scored. (Not the
    session's 8-device `tiny_run`: XLA's CPU threading follows the device count, and the
    adapters then differ in the 5th digit.)"""
    wd = tmp_path_factory.mktemp("one_process")
    for script, args in (
        ("train.py", [*CONFIG, "--progress=false"]),
        ("evaluate.py", [f"--systems={','.join(SYSTEMS)}"]),
    ):
        cmd = [sys.executable, str(ROOT / script), *args, "--workdir", str(wd)]
        out = subprocess.run(
            cmd, env=_env(2), capture_output=True, text=True, timeout=WAIT_S, check=False
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return wd


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def test_two_processes_killed_resumed_and_scored_equal_one_process(reference, tmp_path):
    wd = tmp_path / "two_processes"
    args = [*CONFIG, "--workdir", str(wd)]
    procs = _launch("train.py", args, flags=_train_flags)
    deadline = time.monotonic() + WAIT_S
    while not glob.glob(str(wd / "ckpt" / "stage2" / "step_*")):  # mid stage 2
        assert time.monotonic() < deadline, "stage 2 never checkpointed"
        assert all(p.poll() is None for p in procs), _finish(procs)
        time.sleep(0.2)
    procs[1].kill()
    (rc0, text0), (rc1, _) = _finish(procs)
    assert rc1 != 0 and rc0 == 75, text0[-3000:]
    assert "Relaunch all 2 processes with the same command to resume" in text0
    assert "Traceback" not in text0

    _assert_ok(_finish(_launch("train.py", args, flags=_train_flags)))
    ref, got = results.load(reference), results.load(wd)
    assert got.speakers() == ref.speakers() and len(got.speakers()) == 3
    assert _max_diff(got.si_lora(), ref.si_lora()) <= 1e-6
    for s in ref.speakers():
        assert _max_diff(got.speaker_lora(s), ref.speaker_lora(s)) <= 1e-6
    # every file of the run was written by one process: no leftovers of a race
    assert not [p for p in wd.rglob("*") if p.name.endswith((".part", ".tmp"))]

    evaluate = ["--workdir", str(wd), f"--systems={','.join(SYSTEMS)}"]
    outcome = _finish(_launch("evaluate.py", evaluate, flags=_eval_flags))
    _assert_ok(outcome)
    assert "| PQM (NF4 + own speaker LoRA) |" in outcome[0][1]
    mine = [json.loads(x) for x in (wd / "transcripts.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (reference / "transcripts.jsonl").read_text().splitlines()]
    assert mine == theirs
