"""`search --scenario server`: after the model search, the serving search over how its
finalists are served, for real: a local Ray, Ray Serve with HAProxy on a free loopback port,
MLPerf LoadGen over HTTP, a sqlite MLflow store, the tiny CNN. LoadGen runs are short
(0.5 s, 50 queries): the figures are real but say nothing of the model; the tests check the
records, the files, resume and the exit codes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tuner.serve.source import resolve, spec_for

from conftest import FAST_TIMING, MODEL, NAME, tuner_env, write_space

pytestmark = pytest.mark.slow  # two searches, each with a Ray and a Ray Serve

ONE_CONFIG = {"quantization": ["none"], "precision": ["fp32"], "threads": [1], "layout": ["contiguous"],
              "batch_size": [1], "compile": ["eager", "torchscript"]}  # fmt: skip
SERVING = {"trials": 3, "variants": 2, "max_batch_size": [1, 2], "batch_wait_ms": [0, 2], "ongoing_per_batch": [1, 2],
           "duration_s": 0.5, "min_queries": 50, "max_steps": 2}  # fmt: skip


@pytest.fixture
def env(tmp_path):
    """The CLI's environment, with HAProxy's files in a short temporary folder of the test's
    (its socket path must stay under 98 characters), as tests/test_serve_cli.py does."""
    from tuner.serve.app import HAPROXY_FILES

    folder = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    e = tuner_env(tmp_path)
    e.update({k: str(folder / name) if name else str(folder) for k, name in HAPROXY_FILES.items()})
    yield e
    shutil.rmtree(folder, ignore_errors=True)


def _search(tmp_path, bound: float, model_trials: int = 2, finalists: int = 2, **serving: object) -> list[str]:
    space = write_space(tmp_path / "space.yaml", dimensions=ONE_CONFIG, search={"trials": model_trials},
                        confirm={"finalists": finalists, "rounds": 1}, serving={**SERVING, **serving})  # fmt: skip
    return [sys.executable, "-m", "tuner", "search", MODEL, "--space", str(space), "--weights", "random",
            "--output", "out", "--scenario", "server", "--latency-bound-ms", str(bound)]  # fmt: skip


def test_server_search_is_interrupted_in_its_serving_stage_resumes_there_and_publishes(tmp_path, env):
    # The first run is stopped (SIGTERM, as a job scheduler stops it) once its first serving trial is recorded.
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_search(tmp_path, 2000), cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 400
        while time.time() < deadline and "serving trial 1/3" not in (tmp_path / "first.log").read_text():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()
    first = (tmp_path / "first.log").read_text()
    assert "interrupted by SIGTERM" in first and f"--resume {tmp_path / 'out'}" in first
    state = json.loads((tmp_path / "out" / "search.json").read_text())
    assert (state["status"], state["stage"]) == ("interrupted", "serving"), first
    kept = pd.read_csv(tmp_path / "out" / "serving.csv")
    assert 1 <= len(kept) < 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    (parent,) = client.search_runs([client.get_experiment_by_name(f"tuner/{MODEL}").experiment_id],
                                   "tags.`tuner.kind` = 'search'")  # fmt: skip
    assert parent.info.status == "KILLED" and parent.data.tags["tuner.status"] == "interrupted"

    r = subprocess.run([sys.executable, "-m", "tuner", "search", MODEL, "--resume", "out", "--scenario", "server"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming in the serving stage" in r.stdout and "confirming" not in r.stdout  # no model search again
    table = pd.read_csv(tmp_path / "out" / "serving.csv")
    assert len(table) == 3 and table["mlflow_run_id"].iloc[0] == kept["mlflow_run_id"].iloc[0]
    assert set(table["status"]) == {"ok"} and (table["qps_at_bound"] > 0).all()
    first_knobs = table.iloc[0][["variant", "replicas", "threads", "max_batch_size", "max_ongoing_requests"]]
    assert list(first_knobs) == [0, 1, 1, 1, 2]  # the pick's default service comes first

    # MLflow: three serving child runs under the one parent, beside the two variant trials
    exp = client.get_experiment_by_name(f"tuner/{MODEL}")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(x for x in runs if x.data.tags.get("tuner.kind") == "search")
    served = [x for x in runs if x.data.tags.get("tuner.stage") == "serving"]
    assert len(served) == 3 and len([x for x in runs if x.data.tags.get("tuner.kind") == "trial"]) == 2
    for x in served:
        assert x.data.tags["mlflow.parentRunId"] == parent.info.run_id and x.data.tags["tuner.kind"] == "serving"
        assert {"max_batch_size", "batch_wait_timeout_s", "replicas", "threads", "max_ongoing_requests",
                "variant"} <= set(x.data.params)  # fmt: skip
        assert {"qps_at_bound", "p50_ms", "p90_ms", "p99_ms", "batch_requests_mean"} <= set(x.data.metrics)
        assert any(a.path == "loadgen" for a in client.list_artifacts(x.info.run_id))
    assert parent.info.status == "FINISHED" and "## Serving" in parent.data.tags["mlflow.note.content"]
    assert parent.data.metrics["serving_qps_at_bound"] == table["qps_at_bound"].max()
    # the picture of every trial's p50/p99 against the offered QPS and of where its time went
    assert (tmp_path / "out" / "serving.png").stat().st_size > 10_000
    assert "serving.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert table["steps"].map(lambda t: len(json.loads(t)) >= 1).all() and (table["stage_model_ms"] > 0).all()

    # recommended.yaml's serving section names the winner and its registered version, whose
    # tags carry the knobs; `tuner serve OUTPUT_DIR --export` serves it with them, no flags
    doc = yaml.safe_load((tmp_path / "out" / "recommended.yaml").read_text())
    section = doc["serving"]
    best = table.loc[table["qps_at_bound"].idxmax()]
    assert section["figures"]["qps_at_bound"] == pytest.approx(best["qps_at_bound"])
    assert doc["registered_model"] == section["registered_model"]
    name, version = section["registered_model"].split("/")
    tags = client.get_model_version(name, version).tags
    assert {k: tags[f"tuner.serving.{k}"] for k in section["knobs"]} == {k: str(v) for k, v in section["knobs"].items()}
    served = spec_for(resolve(str(tmp_path / "out"), uri))  # what `tuner serve OUTPUT_DIR` runs, no flags
    assert served.knobs() == section["knobs"] and served.model_uri == f"models:/{section['registered_model']}"
    assert spec_for(resolve(str(tmp_path / "out"), uri), max_batch_size=3).max_ongoing_requests == 6  # a flag wins
    exported = yaml.safe_load((tmp_path / "out" / "serving" / "serve_config.yaml").read_text())
    assert exported["applications"][0]["args"] == served.to_args()


def test_a_bound_no_config_meets_is_said_with_the_best_p99_and_exits_1(tmp_path, env):
    # the model search at its smallest: the baseline alone, not confirmed
    cmd = _search(tmp_path, 0.01, model_trials=1, finalists=0, trials=1, variants=1, max_steps=1)
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no config meets p99 <= 0.01 ms: the best p99 seen was" in r.stdout
    doc = yaml.safe_load((tmp_path / "out" / "recommended.yaml").read_text())
    assert "serving" not in doc  # the model search's pick stands; nothing is claimed for serving
    assert NAME in doc["registered_model"]


def test_a_nightly_job_with_the_server_scenario_measures_the_champions_service_the_next_night(tmp_path, env):
    # Two nights of a job whose model names `scenario: server`: the first serves its pick (one
    # serving trial) and stores the served figures; the second's regression check measures the
    # champion's service (the alias's version, its tuned knobs) after the in-process rounds,
    # normalised by that check's probe. One trial a night (the baseline): the champion is kept,
    # and stands on the served figures of the night it was accepted.
    job = {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "output": str(tmp_path / "runs"),
        "regression": {"threshold": 0.5, "served_threshold": 0.9},  # tiny timings: only a gross change counts
        "models": [{
            "model": MODEL, "weights": "random", "trials": 1, "scenario": "server", "latency_bound_ms": 2000,
            "overrides": {"dimensions": ONE_CONFIG, "eval": {"samples": 8, "calibration_samples": 4, "input_size": 32},
                          "timing": FAST_TIMING, "confirm": {"finalists": 1, "rounds": 1},
                          "serving": {**SERVING, "trials": 1, "variants": 1}},
        }],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    client = MlflowClient(job["tracking_uri"], registry_uri=job["tracking_uri"])
    nights, champions = [], []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "tuner", "nightly", "job.yaml"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        run = sorted((tmp_path / "runs").iterdir())[-1]
        nights.append((r.stdout, json.loads((run / "nightly-report.json").read_text())["models"][0], run))
        champions.append(client.get_model_version_by_alias(NAME, "champion").version)
        time.sleep(1.1)  # run folders are named by the second
    (out1, rep1, _), (out2, rep2, run2) = nights
    assert "serving trial 1/1" in out1 and rep1["serving"] and rep1["regression_check"] is None
    stored = rep1["champion_figures"]
    assert stored["served_qps"] > 0 and stored["served_vs_probe"] > 0 and stored["served_bound_ms"] == 2000

    # night 2 measured the service of the version the alias named after night 1
    assert f"the champion's service {NAME}/{champions[0]} (its tuned knobs), LoadGen server" in out2
    checks = rep2["regression_check"]["checks"]
    assert checks["served_vs_probe"]["judged"] and checks["served_vs_probe"]["accepted"] == stored["served_vs_probe"]
    assert checks["served_vs_probe"]["now"] > 0 and not checks["served_qps"]["judged"]
    assert "the champion's served QPS against the same probe" in out2
    assert "| served_vs_probe |" in (run2 / "nightly-report.md").read_text()
    assert list((Path(rep2["output"]) / "regression-check" / "served-1").glob("server-*/mlperf_log_summary.txt"))
    assert champions[1] == champions[0] and rep2["champion_figures"]["served_vs_probe"] == stored["served_vs_probe"]
