"""Shared fixtures: a tiny model, a tiny space file, a temporary MLflow store."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tiny_models is importable as `tiny_models:small_cnn`

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# No test writes into the user's real ~/.cache (the hardware ceiling measured under test load,
# the nightly lock): set before any test module imports tuner, so in-process calls
# (cli.main.main, measure.ceiling.for_hardware, nightly.job.lock_path) resolve under it too.
# CLI subprocesses get their own folder from `tuner_env`.
# Removed at exit (atexit: also after --collect-only or a run whose tests were all skipped).
TEST_CACHE = Path(tempfile.mkdtemp(prefix="tuner-tests-cache-"))
os.environ["XDG_CACHE_HOME"] = str(TEST_CACHE)
atexit.register(shutil.rmtree, TEST_CACHE, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _test_cache_home() -> Path:
    """The session's cache folder (XDG_CACHE_HOME, set above)."""
    assert os.environ["XDG_CACHE_HOME"] == str(TEST_CACHE)
    return TEST_CACHE


# Fast timing knobs for tests: figures are real but short; never asserted against a clock.
# load_sample_s: the interference guard's load sample before and after each timing (0.5 s by default).
FAST_TIMING = {
    "warmup_max_s": 1.0,
    "window_s": 0.02,
    "min_iters": 5,
    "min_time_s": 0.1,
    "max_time_s": 0.6,
    "load_sample_s": 0.05,
}


def write_space(path: Path, **sections: object) -> Path:
    doc = {
        "dimensions": {"batch_size": [1, 2], "compile": ["eager", "torchscript"]},
        "search": {"trials": 4, "time_budget_minutes": 10},
        "eval": {"samples": 8, "calibration_samples": 4, "input_size": 32},
        "timing": FAST_TIMING,
        "confirm": {"finalists": 2, "rounds": 2},
    }
    for k, v in sections.items():
        if isinstance(v, dict):
            doc.setdefault(k, {}).update(v)
        else:
            doc[k] = v
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    return write_space(tmp_path / "space.yaml")


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def small_reference():
    """fp32 reference for the tiny CNN on synthetic data (computed in this process)."""
    from tuner.inputs.models import ModelSpec
    from tuner.inputs.reference import prepare_reference

    return prepare_reference(ModelSpec("tiny_models:small_cnn", "random", 0), input_size=32, n_eval=8, n_calib=4)


@contextlib.contextmanager
def mlflow_server(folder: Path, port: int | None = None):
    """A real `mlflow server` on 127.0.0.1 with DESIGN.md's lean settings (one worker, no job
    execution), its sqlite store and artifacts in `folder`. Yields the URL; stops it after."""
    import socket
    import time
    import urllib.request

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "art")],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "a"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not answer within 60 s")
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server the test started: SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def tuner_env(cwd: Path) -> dict[str, str]:
    # XDG_CACHE_HOME: the session's cache folder (TEST_CACHE), never the user's. The CLI runs
    # share it, so the hardware ceiling is measured once per test session, not once per search.
    return {**os.environ, "PYTHONPATH": str(TESTS), "MLFLOW_TRACKING_URI": "", "XDG_CACHE_HOME": str(TEST_CACHE)}


def tuner(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess."""
    env = tuner_env(cwd)
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
