"""The `tuner serve` command as a user runs it: from a search's output folder, on a local Ray
it starts itself, answering until Ctrl-C, which stops it cleanly; `--export` files that Ray
Serve's own `serve run` accepts; and clear errors (exit 2) for what it cannot serve. Every
server listens on 127.0.0.1 and is stopped by the test; HAProxy's files go to a temporary
folder of the test's."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import NAME, VARIANTS, stop, tiny_variant, tuner, tuner_env

pytestmark = pytest.mark.slow  # each test starts a Ray of its own


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(versions: dict, index: int) -> str:
    return next(v[2] for v in versions.values() if v[0] == tiny_variant(VARIANTS[index][0]))


@pytest.fixture
def env(tmp_path):
    """The CLI's environment, with HAProxy's files in a short temporary folder (its socket
    path must stay under 98 characters)."""
    from tuner.serve.app import HAPROXY_FILES

    folder = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    e = tuner_env(tmp_path)
    e.update({k: str(folder / name) if name else str(folder) for k, name in HAPROXY_FILES.items()})
    yield e
    shutil.rmtree(folder, ignore_errors=True)


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = log.read_text()
        if text in out:
            return out
        assert proc.poll() is None, out[-3000:]
        time.sleep(0.5)
    pytest.fail(f"no {text!r} within {timeout_s:.0f} s: {log.read_text()[-3000:]}")


def test_serve_a_search_output_folder_until_ctrl_c(registered, tmp_path, env):
    folder, uri, ref, versions = registered
    out = tmp_path / "search-output"  # what a search leaves: recommended.yaml names the registered version
    out.mkdir()
    version = _version(versions, 5)  # OpenVINO int8
    recommended = {
        "variant": tiny_variant(VARIANTS[5][0]).to_dict(),
        "model": "tiny_models:small_cnn",
        "mlflow": {"tracking_uri": uri, "parent_run_id": "unused"},
        "registered_model": f"{NAME}/{version}",
    }
    (out / "recommended.yaml").write_text(yaml.safe_dump(recommended))
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tuner", "serve", str(out), "--port", str(port)],
                                cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        text = _wait_for_line(proc, log, "Ctrl-C to stop", 240)
        assert f"POST http://127.0.0.1:{port}/" in text and f"serving {NAME}/{version}" in text
        assert "batches of up to 1 request(s)" in text and "/-/healthz" in text
        # the first calls in a replica against the registered confirmed p50 (1.0 ms here)
        assert re.search(r"a replica's first \d+ calls \(batch 1\): median [\d.]+ ms, [\d.]+x the registered "
                         r"confirmed p50 1.00 ms", text), text  # fmt: skip
        assert re.search(r"images: (fast|exact) decode \(", text), text
        doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read())
        assert doc["artifact"] == "openvino" and doc["model_uri"] == f"models:/{NAME}/{version}"
        x = json.dumps({"inputs": [[[[0.5] * 32] * 32] * 3]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/", x, {"Content-Type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"][0]) == 10
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            stop(proc)
    text = log.read_text()
    assert "stopping the service" in text and text.rstrip().endswith("stopped"), text[-2000:]
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_export_writes_a_serve_config_that_serve_run_runs(registered, tmp_path, env):
    folder, uri, ref, versions = registered
    port = _free_port()
    version = _version(versions, 4)  # ONNX Runtime int8
    r = subprocess.run([sys.executable, "-m", "tuner", "serve", f"models:/{NAME}/{version}", "--tracking-uri", uri,
                        "--export", str(tmp_path / "export"), "--port", str(port), "--max-batch-size", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    config = yaml.safe_load((tmp_path / "export" / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "tuner.serve.app:app_builder" and app["args"]["max_batch_size"] == 2
    assert config["http_options"] == {"host": "127.0.0.1", "port": port}
    service = yaml.safe_load((tmp_path / "export" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService" and service["apiVersion"] == "ray.io/v1"
    served = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    assert served["args"] == {**app["args"]} and served["import_path"] == app["import_path"]
    workers = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    (container,) = workers["template"]["spec"]["containers"]
    assert workers["replicas"] == 1 and container["resources"]["limits"]["cpu"] == "1"
    # Ray Serve's own CLI runs the exported file
    log = tmp_path / "serve-run.log"
    serve_cli = str(Path(sys.executable).parent / "serve")
    with open(log, "w") as f:
        config_file = str(tmp_path / "export" / "serve_config.yaml")
        # the replicas drain 1 s at Ctrl-C instead of Serve's 30 s behind HAProxy (nothing routes to them then)
        quick = {**env, "RAY_worker_niceness": "0", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}
        proc = subprocess.Popen([serve_cli, "run", config_file], cwd=tmp_path, env=quick, stdout=f,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 240
        while True:
            try:
                doc = json.loads(urllib.request.urlopen(url, timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        assert doc["artifact"] == "onnx" and doc["serving"]["max_batch_size"] == 2
        x = json.dumps({"inputs": [[[[0.5] * 32] * 32] * 3] * 3}).encode()
        req = urllib.request.Request(url, x, {"Content-Type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stop(proc)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["models:/tuner-no_such_model@champion"], "MODEL_URI models:/tuner-no_such_model@champion: no such model"),
        (["{empty}"], "neither a search's output folder (no recommended.yaml) nor an MLflow model"),
        (["tuner-resnet50"], "not a registered model (models:/tuner-<model>@champion"),
        (["models:/{name}/{version}", "--replicas", "0"], "`replicas` is 0; allowed: at least 1"),
        (["models:/{name}/{version}", "--threads", "512"], "needs 512 CPUs; the Ray cluster has"),
    ],
)
def test_what_cannot_be_served_is_a_clear_error(registered, tmp_path, env, args, fragment):
    folder, uri, ref, versions = registered
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", name=NAME, version=_version(versions, 0)) for a in args]
    r = tuner("serve", *args, "--tracking-uri", uri, "--port", str(_free_port()), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
