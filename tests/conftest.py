"""Test-session set-up shared by every test module.

Eight fake CPU devices let sharding tests build real meshes on a laptop or a 2-core CI machine;
it must be set before jax is imported anywhere. A compilation cache for the session (JAX's
persistent cache, in a temporary folder; inherited by the train.py / evaluate.py processes the
tests launch) compiles each program once, not once per process: the same executables, in
about half the time of a tiny run.

Each test module's compiled programs are released when it ends (`_release_compiled_programs`):
XLA:CPU maps every executable's code into the process, and one pytest process that kept all of
them passed Linux's default limit of 65,530 memory mappings (vm.max_map_count) late in a full
run, where the next mmap failed inside XLA and the process died (SIGSEGV/SIGABRT while compiling
or serialising a program). Programs a later module needs again come back from the persistent
cache.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="pqm_test_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import gc
import pathlib

import jax
import numpy as np
import pytest
import soundfile

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module: drop every jitted program (JAX's and pqm_jax's caches), so that
    the executables and their memory mappings are freed (see the module docstring)."""
    yield
    from pqm_jax import jit_cache

    jit_cache.clear()
    jax.clear_caches()
    gc.collect()


def _shared_data() -> pathlib.Path | None:
    env = os.environ.get("PQM_SHARED_DATA")
    path = pathlib.Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """`$PQM_SHARED_DATA`, default `<repo>/../shared/data`; skips when absent."""
    path = _shared_data()
    if path is None:
        pytest.skip("shared data not found: set PQM_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def fsdd_root(shared_data: pathlib.Path) -> pathlib.Path:
    root = shared_data / "fsdd"
    if not (root / "recordings").is_dir():
        pytest.skip(f"FSDD not found under {shared_data}")
    return root


@pytest.fixture(scope="session")
def dev_clean_text(shared_data: pathlib.Path) -> pathlib.Path:
    path = shared_data / "librispeech-dev-clean-text" / "dev-clean.trans.txt"
    if not path.is_file():
        pytest.skip(f"LibriSpeech dev-clean text not found under {shared_data}")
    return path


def tone(seconds: float, rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    """A float32 sine [samples] at half amplitude."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path: pathlib.Path, samples: np.ndarray, rate: int = 16_000, **kw) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, rate, **kw)
    return path


@pytest.fixture(name="tone")
def tone_fixture():
    """The `tone(seconds, rate=16000, freq=440.0)` helper."""
    return tone


@pytest.fixture(name="write_audio")
def write_audio_fixture():
    """The `write_audio(path, samples, rate=16000, **soundfile_kwargs)` helper."""
    return write_audio


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    """`configs/tiny_test.py` trained once per session, in this process (mesh.data=2): a
    finished run folder. Tests that change it work on a copy."""
    from pqm_jax.run import config as config_lib
    from pqm_jax.run import pipeline

    workdir = tmp_path_factory.mktemp("tiny_run")
    config = config_lib.from_dict(config_lib.load_file(REPO / "configs" / "tiny_test.py"))
    pipeline.run_pipeline(config, workdir, progress=False)
    return workdir
