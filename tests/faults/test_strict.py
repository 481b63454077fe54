"""`data.strict` / `--strict`: the first bad input item stops the run, named; the summary is printed."""

import json
import pathlib
import subprocess
import sys

import pytest

from pqm_jax.data import issues
from pqm_jax.run import config as config_lib
from pqm_jax.run import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _manifest(tmp_path, tone, write_audio):
    rows = []
    for s in ("a", "b"):
        for i in range(3):
            write_audio(tmp_path / f"{s}{i}.wav", tone(0.3))
            rows.append({"path": f"{s}{i}.wav", "text": "one two", "speaker": s})
    rows.append({"path": "gone.wav", "text": "no audio here", "speaker": "a"})
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(path, strict):
    c = config_lib.load_file(ROOT / "configs" / "tiny_test.py")
    values = {"data.source": "manifest", "data.root": str(path), "data.strict": strict}
    values |= {"data.voices": (), "stage2.enabled": False}
    return config_lib.from_dict(config_lib.override(c, values))


def test_strict_stops_at_the_first_bad_item_and_names_it(tmp_path, tone, write_audio):
    path = _manifest(tmp_path, tone, write_audio)
    with pytest.raises(issues.InputError, match=r"gone\.wav.*strict mode"):
        pipeline.run_pipeline(_config(path, True), tmp_path / "run", progress=False)


def test_the_cli_flag_reaches_the_run(tmp_path, tone, write_audio):
    path = _manifest(tmp_path, tone, write_audio)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"--config={ROOT / 'configs' / 'tiny_test.py'}",
        f"--workdir={tmp_path / 'run'}",
        "--config.data.source=manifest",
        f"--config.data.root={path}",
        "--config.stage2.enabled=False",
        "--strict",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode != 0
    assert "train.py: bad input:" in out.stderr and "gone.wav" in out.stderr
    assert "Traceback" not in out.stderr
