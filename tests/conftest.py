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
from typing import Any

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
# torch inductor's compile cache (by default /tmp/torchinductor_<user>): under the session's
# folder too, so no test writes outside it, and a run here compiles as cold as CI does.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(TEST_CACHE / "inductor")
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


def use_store(request: pytest.FixtureRequest, uri: str) -> None:
    """MLflow's fluent API (`models:/` URIs) reads `uri` for the rest of the test, then the
    process-wide settings are put back (tracking.store.fluent_uri, kept open until then)."""
    from tuner.tracking.store import fluent_uri

    block = fluent_uri(uri)
    block.__enter__()
    request.addfinalizer(lambda: block.__exit__(None, None, None))


def write_space(path: Path, **sections: object) -> Path:
    doc = {
        # No static int8 unless a test asks for it: its FX build costs about 2 s per trial
        # and per confirmation process, and few tests are about it.
        "dimensions": {"batch_size": [1, 2], "compile": ["eager", "torchscript"],
                       "quantization": ["none", "dynamic_int8"]},
        "search": {"trials": 4, "time_budget_minutes": 10},
        "eval": {"samples": 8, "calibration_samples": 4, "input_size": 32},
        "timing": FAST_TIMING,
        # No confirmation (about 8 s of a test search: its actor and fresh processes); the
        # tests of the confirmation, and of what it writes, ask for it.
        "confirm": {"finalists": 0},
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


# The registered tiny model, one version per artifact kind (`registered`).
MODEL = "tiny_models:small_cnn"
NAME = "tuner-tiny_models_small_cnn"  # tuner.tracking.store.registered_name(MODEL)
VARIANTS = [  # (variant fields, the artifact that reproduces it)
    (dict(compile="torchscript", quantization="static_int8"), "torchscript"),  # FX int8
    (dict(compile="eager", batch_size=2), "exported"),
    (dict(compile="inductor", layout="channels_last"), "aoti"),
    (dict(compile="inductor", quantization="static_int8"), "aoti"),  # PT2E int8
    (dict(compile="onnxruntime", quantization="static_int8"), "onnx"),
    (dict(compile="openvino", quantization="static_int8"), "openvino"),
    (dict(compile="openvino_throughput", quantization="static_int8", batch_size=4), "openvino"),
]

def tiny_variant(fields: dict) -> Any:
    from tuner.core.variant import Variant

    return Variant.from_dict({"batch_size": 1, "threads": 1, **fields})


@pytest.fixture(scope="session")
def registered(tmp_path_factory):
    """Each of VARIANTS saved and registered as a version of `tuner-tiny_models_small_cnn`
    (confirmed p50 1.0 ms, for the comparison `measure --model-uri` prints), once per test
    session: the registered-model tests and the serving tests share them.
    Returns (folder, tracking URI, reference, {label: (variant, kind, version, tags)})."""
    import numpy as np
    import pandas as pd

    from tuner.deploy.register import log_and_register
    from tuner.inputs.models import ModelSpec
    from tuner.inputs.reference import prepare_reference
    from tuner.tracking.store import Tracker

    folder = tmp_path_factory.mktemp("registered")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(folder)  # a local store keeps its artifacts in ./mlartifacts
    ref = prepare_reference(ModelSpec(MODEL, "random", 0), input_size=32, n_eval=8, n_calib=4)
    tracker = Tracker(uri, f"tuner/{MODEL}")
    row = pd.Series({"confirmed_p50_ms": 1.0, "confirmed_p50_ms_low": 0.9, "confirmed_p50_ms_high": 1.1})
    versions = {}
    x = ref.data.inputs[:5].numpy()  # five rows: every batch size here pads its last batch
    np.save(folder / "x.npy", x)
    for fields, kind in VARIANTS:
        variant = tiny_variant(fields)
        parent = tracker.start_parent("export test", {}, {})
        child = tracker.log_child(parent, variant.label, {}, {}, {})  # the recommended trial's run
        tags = log_and_register(pd.Series({**row, "mlflow_run_id": child}), variant, ref, tracker, parent, MODEL,
                                "test host (fingerprint x)")  # fmt: skip
        version = tags["tuner.registered_model"].split("/")[1]
        versions[variant.label] = (variant, kind, version, tags)
    os.chdir(cwd)
    return folder, uri, ref, versions


@contextlib.contextmanager
def mlflow_server(folder: Path, port: int | None = None):
    """A real `mlflow server` on 127.0.0.1 with lean settings (one worker, no job
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
