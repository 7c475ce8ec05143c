"""The pick in its runtime's own form (tuner/deploy/), for each runtime, for real: saved from
the built variant, logged and registered in a real MLflow store, loaded back in a process
where tuner cannot be imported (as a deployment loads it) and compared with the variant's
own outputs; measured back with `measure --model-uri`; served over HTTP by `mlflow models
serve`; and a bad URI or a missing runtime is a clear error (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tuner.deploy.native import artifact_kind
from tuner.inputs.models import ModelSpec
from tuner.inputs.reference import prepare_reference
from tuner.tracking.store import Tracker

from conftest import NAME, TESTS, VARIANTS, stop, tiny_variant, tuner, tuner_env, use_store, write_space

slow = pytest.mark.slow  # `registered` builds each variant twice (the variant and its artifact)

IDS = [f"{kind}-{i}" for i, (_, kind) in enumerate(VARIANTS)]

# Loads every registered version where `import tuner` fails, and saves its outputs.
LOAD_WITHOUT_TUNER = """
import sys, json, warnings
sys.modules["tuner"] = None  # any import of tuner now raises ImportError
import numpy as np, mlflow.pyfunc
warnings.simplefilter("default")  # a deprecation warning would be printed
for uri, x_path, out_path in json.loads(sys.argv[1]):
    np.save(out_path, mlflow.pyfunc.load_model(uri).predict(np.load(x_path)))
"""


@slow
def test_each_runtime_is_saved_in_its_own_form_and_described(registered, request):
    folder, uri, ref, versions = registered
    client = MlflowClient(uri)
    use_store(request, uri)
    for variant, kind, version, tags in versions.values():
        assert artifact_kind(variant) == kind
        assert tags["tuner.model_artifact"].startswith(f"{kind} (")
        # registering loads the model back through MLflow and compares it with the variant
        assert tags["tuner.model_check"].startswith("same outputs as the built variant"), tags["tuner.model_check"]
        mv = client.get_model_version(NAME, version)
        assert variant.label in mv.description and "p50 ms 1 [0.9, 1.1]" in mv.description
        assert mv.tags["tuner.artifact"] == kind and mv.tags["tuner.hardware"] == "test host (fingerprint x)"
        assert mv.tags["tuner.weights"] == ref.weights_label and mv.tags["tuner.data"] == ref.data_label
        # the fast JPEG decode's agreement, measured through the registered model on photo-like JPEGs
        decode = {k.removeprefix("tuner.decode."): v for k, v in mv.tags.items() if k.startswith("tuner.decode.")}
        assert decode["fast"] in ("true", "false") and decode["limit"] == "0.01", decode
        assert decode["judged_by"] in ("top-1", "distribution") and 0 <= float(decode["agreement"]) <= 1
        assert decode["images"].startswith("12 (12 decoded scaled): photo-like JPEGs (synthetic)"), decode
        assert (decode["fast"] == "true") == (1 - float(decode["agreement"]) <= 0.01)
        assert tags["tuner.decode"].startswith("fast JPEG decode against exact on 12 image(s)")
        reqs = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}/{version}")).read_text().split()
        package = {"onnx": "onnxruntime", "openvino": "openvino"}.get(kind, "torch")
        assert any(r.startswith(f"{package}==") for r in reqs) and "numpy" in reqs, reqs
        assert not any(r.startswith("tuner") for r in reqs)  # the loader travels with the model
        # the profile of the pick, on the recommended trial's run, and its top operators
        profile = {
            f.path.removeprefix("profile/") for f in client.list_artifacts(_child_of(client, mv.run_id), "profile")
        }
        expected = {"onnx": {"onnxruntime_profile.json"}, "openvino": {"openvino_perf_counters.txt"}}
        assert profile == expected.get(kind, {"profile.json", "profile_top20.txt"}), (kind, profile)
        top = tags["tuner.profile_top"].split(", ")
        assert 1 <= len(top) <= 5 and all(t.endswith("%") for t in top), tags["tuner.profile_top"]
    alias = client.get_model_version_by_alias(NAME, "candidate")
    assert str(alias.version) == max(versions.values(), key=lambda v: int(v[2]))[2]  # the last registration


@pytest.mark.parametrize(
    "fields, kind",
    [*VARIANTS, (dict(compile="eager", quantization="dynamic_int8"), "torchscript"),
     (dict(compile="torchscript"), "torchscript"), (dict(compile="inductor_max_autotune"), "aoti")],
)  # fmt: skip
def test_each_compile_mode_has_its_artifact(fields, kind):
    assert artifact_kind(tiny_variant(fields)) == kind


def test_the_loader_runs_full_batches_and_trims_the_padding():
    """deploy/pyfunc_model.py's predict: any number of rows, in full batches of the measured
    size (the last padded by wrapping around, as the trials did), one output row per input."""
    from tuner.deploy.pyfunc_model import TunedModel

    calls = []

    def runner(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.reshape(len(x), -1)[:, :2] * 2

    model = TunedModel()
    model.batch_size, model.runner = 4, runner
    x = np.arange(5 * 3, dtype=np.float32).reshape(5, 3, 1, 1)
    out = model.predict(None, x)
    assert calls == [4, 4] and out.shape == (5, 2) and out.dtype == np.float32
    assert np.array_equal(out, x.reshape(5, 3)[:, :2] * 2)
    with pytest.raises(ValueError, match="empty"):
        model.predict(None, x[:0])


def _child_of(client: MlflowClient, parent: str) -> str:
    """The trial run under `parent` (a load test of the served model may add a run of its own)."""
    run = client.get_run(parent)
    flt = f"tags.`mlflow.parentRunId` = '{parent}' and tags.`tuner.kind` = 'trial'"
    (child,) = client.search_runs([run.info.experiment_id], flt)
    return child.info.run_id


@slow
def test_each_artifact_loads_without_tuner_and_reproduces_the_variant(registered):
    folder, uri, ref, versions = registered
    x = torch.from_numpy(np.load(folder / "x.npy"))
    jobs = [(f"models:/{NAME}/{version}", str(folder / "x.npy"), str(folder / f"out-{version}.npy"))
            for _, _, version, _ in versions.values()]  # fmt: skip
    (folder / "tmp").mkdir(exist_ok=True)  # MLflow's downloads go there, not to /tmp
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": "", "TMPDIR": str(folder / "tmp")}
    r = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_TUNER, json.dumps(jobs)], env=env, capture_output=True,
                       text=True, timeout=600, cwd=folder)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # The loader's own calls warn about nothing: torch.jit's FutureWarnings stay quiet. (torch's
    # C++ note that quantized tensors are deprecated still prints for the FX int8 TorchScript
    # pick, and MLflow's store has its own SQLAlchemy deprecation.)
    assert "FutureWarning" not in r.stderr and "torch.jit" not in r.stderr, r.stderr[-3000:]
    from tuner.build import build

    for variant, kind, version, _ in versions.values():
        got = torch.from_numpy(np.load(folder / f"out-{version}.npy"))
        built = build(ref.load_module(), variant, ref.data.calibration)
        padded = torch.cat([x, x[: (-len(x)) % variant.batch_size]])
        with torch.inference_mode():
            want = torch.cat([built.run(built.prepare(b)).float() for b in padded.split(variant.batch_size)])[: len(x)]
        assert got.shape == want.shape, (variant.label, kind)
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-4), (variant.label, kind, (got - want).abs().max())


def _one_per_kind(versions: dict) -> list:
    """One registered version of each artifact kind (the first of VARIANTS to have it)."""
    return list({kind: (variant, kind, version, tags) for variant, kind, version, tags in reversed(
        list(versions.values()))}.values())  # fmt: skip


@slow
def test_measure_model_uri_measures_the_artifact_itself(registered, tmp_path):
    folder, uri, ref, versions = registered
    space = write_space(tmp_path / "space.yaml", eval={"samples": 8, "calibration_samples": 4, "input_size": 32})
    for variant, kind, version, _ in _one_per_kind(versions):
        m = tuner("measure", "--model-uri", f"models:/{NAME}/{version}", "--tracking-uri", uri, "--space", str(space),
                  "--weights", "random", "--json", cwd=tmp_path)  # fmt: skip
        assert m.returncode == 0, m.stdout + m.stderr
        fig = json.loads(m.stdout.strip().splitlines()[-1])
        assert fig["status"] == "ok", fig["error"]
        assert fig["artifact"] == kind and fig["model_uri"] == f"models:/{NAME}/{version}"
        assert {k: fig[k] for k in variant.to_dict()} == variant.to_dict()
        assert fig["latency_p50_ms"] > 0 and fig["p50_vs_confirmed"] == pytest.approx(fig["latency_p50_ms"] / 1.0)
        assert fig["top1_agreement"] >= 0.75  # against the fp32 reference (int8 on a random model)


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("models:/tuner-no_such_model@candidate", "no such model"),
        (f"models:/{NAME}@no_such_alias", "no such model"),
    ],
)
@slow
def test_a_bad_model_uri_is_a_clear_error(registered, tmp_path, uri, fragment):
    folder, tracking, *_ = registered
    m = tuner("measure", "--model-uri", uri, "--tracking-uri", tracking, cwd=tmp_path)
    assert m.returncode == 2, m.stdout + m.stderr
    assert f"--model-uri {uri}" in m.stderr and fragment in m.stderr and "Traceback" not in m.stderr


@slow
def test_a_missing_runtime_is_a_clear_error(registered, tmp_path):
    folder, tracking, ref, versions = registered
    version = next(v for _, kind, v, _ in versions.values() if kind == "onnx")
    uri = f"models:/{NAME}/{version}"
    code = ("import sys; sys.modules['onnxruntime'] = None; from tuner.cli.main import main; "
            f"sys.exit(main(['measure', '--model-uri', {uri!r}, '--tracking-uri', {tracking!r}]))")  # fmt: skip
    m = subprocess.run([sys.executable, "-c", code], env=tuner_env(tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert m.returncode == 2, m.stdout + m.stderr
    assert f"--model-uri {uri}" in m.stderr and "`onnxruntime`" in m.stderr and "Traceback" not in m.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _invoke(url: str, x: np.ndarray) -> tuple[int, np.ndarray | str]:
    """One `mlflow models serve` request: (status, predictions), or (status, the error)."""
    body = json.dumps({"inputs": x.tolist()}).encode()
    req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, np.asarray(json.loads(r.read())["predictions"], dtype=np.float32)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:300]


@slow
# each loader's way of taking concurrent calls once: torch (TorchScript; an exported program runs as
# a torch module too), AOTInductor's runner, ONNX Runtime, OpenVINO's request pool (latency and
# throughput artifacts)
@pytest.mark.parametrize("index", [0, 2, 4, 5, 6], ids=[IDS[i] for i in (0, 2, 4, 5, 6)])
def test_the_registered_model_is_served_over_http(registered, tmp_path, index):
    """`mlflow models serve` answers real requests with the variant's outputs, one at a time
    and from 8 threads at once (the server runs them on its thread pool: an artifact that is
    not safe to call concurrently fails some, as the OpenVINO loader's one shared infer
    request did with "Infer Request is busy")."""
    folder, uri, ref, versions = registered
    variant, _, version, _ = next(v for v in versions.values() if v[0] == tiny_variant(VARIANTS[index][0]))
    port = _free_port()
    # `mlflow models serve` runs `uvicorn` from PATH: the venv's bin, as an activated venv has it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(TESTS), "PATH": path}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/{version}",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer within 120 s: " + (tmp_path / "serve.log").read_text())
        x = np.load(folder / "x.npy")
        alone = [_invoke(url, x[i : i + 1]) for i in range(len(x))]
        assert all(status == 200 for status, _ in alone), alone
        rows = [i % len(x) for i in range(48)]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda i: _invoke(url, x[i : i + 1]), rows))
        status, answer = _invoke(url, x)  # every row in one request
    finally:
        stop(proc)
        log.close()
    failed = [(status, out) for status, out in together if status != 200]
    assert not failed, f"{len(failed)} of {len(rows)} concurrent requests failed: {failed[:2]}"
    for i, (_, out) in zip(rows, together, strict=True):
        assert np.allclose(out, alone[i][1], rtol=1e-5, atol=1e-6), (i, np.abs(out - alone[i][1]).max())
    assert status == 200, answer
    got = torch.from_numpy(np.asarray(answer))
    from tuner.build import build

    built = build(ref.load_module(), variant, ref.data.calibration)
    xs = torch.from_numpy(x)
    padded = torch.cat([xs, xs[: (-len(xs)) % variant.batch_size]])  # as the loader pads the last batch
    with torch.inference_mode():
        want = torch.cat([built.run(built.prepare(b)).float() for b in padded.split(variant.batch_size)])[: len(xs)]
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4), (got - want).abs().max()


def test_an_artifact_that_fails_to_export_is_tagged_and_the_search_goes_on(tmp_path, monkeypatch):
    """register_recommended: an export failure is the parent's `tuner.model_export: failed:
    ...` tag and a warning line, never an exception (the search's results are written already)."""
    from tuner.deploy.register import register_recommended

    monkeypatch.chdir(tmp_path)  # a local store keeps its artifacts in ./mlartifacts
    ref = prepare_reference(ModelSpec("tiny_models:Unexportable", "random", 0), input_size=32, n_eval=4, n_calib=2)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tuner/unexportable")
    parent = tracker.start_parent("export failure", {}, {})
    row = pd.Series({**tiny_variant(dict(compile="onnxruntime")).to_dict(), "mlflow_run_id": ""})
    tags = register_recommended(row, ref, parent, "tiny_models:Unexportable", tracker, "test host")
    assert tags["tuner.model_export"].startswith("failed: ") and "ONNX export failed" in tags["tuner.model_export"]
    assert "tuner.registered_model" not in tags
