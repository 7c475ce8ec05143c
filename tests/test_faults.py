"""Faults, caused for real (docs/errors-faults.md): a variant that fails to build (a model FX
cannot trace), a trial that raises, aborts its process, hangs or eats memory; SIGINT/SIGTERM
to the driver and `--resume`; an MLflow server that stops mid-search and `report --sync`; a
search in which every trial fails, after another on the same sqlite store. Each test checks the
statuses, the MLflow records, the files and the exit code.

Faults come from the test-only `inject_faults:` knob of the space file, in the trial's own
process; `search.enqueue` makes the faulty configs run right after the baseline."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuner.outputs.tables import read_trials

from conftest import mlflow_server, tuner, tuner_env, write_space

pytestmark = pytest.mark.slow
MODEL = "tiny_models:small_cnn"
ONE_CONFIG = {"quantization": ["none"], "precision": ["fp32"], "compile": ["eager"], "threads": [1],
              "layout": ["contiguous"]}  # fmt: skip


def runs(uri: str, model: str = MODEL) -> tuple[object, list]:
    """(parent run, child runs) of the only search in the store."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"tuner/{model}")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("tuner.kind") == "search"]
    assert len(parents) == 1
    return parents[0], [r for r in all_runs if r.data.tags.get("tuner.kind") == "trial"]


def test_every_kind_of_trial_fault_is_recorded_and_the_search_goes_on(tmp_path):
    # A user model FX cannot trace (a real failure of the variant: static int8 at batch 1),
    # then the injected faults, at batches 2-16.
    space = write_space(
        tmp_path / "space.yaml",
        dimensions={**ONE_CONFIG, "quantization": ["none", "static_int8"], "batch_size": [1, 2, 4, 8, 16]},
        search={"trials": 6, "enqueue": [{"batch_size": 1, "quantization": "static_int8"},
                                         *({"batch_size": b, "quantization": "none"} for b in (2, 4, 8, 16))]},
        limits={"trial_timeout_s": 8, "trial_memory_mb": 1500},
        inject_faults=[
            {"when": {"batch_size": 2}, "action": "raise"},
            {"when": {"batch_size": 4}, "action": "abort"},
            {"when": {"batch_size": 8}, "action": "hang"},
            {"when": {"batch_size": 16}, "action": "allocate", "allocate_mb": 4000},
        ],
    )  # fmt: skip
    r = tuner("search", "tiny_models:untraceable", "--space", str(space), "--weights", "random", "--output", "out",
              cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    table = read_trials(tmp_path / "out" / "trials.csv")
    assert len(table) == 6 and table["recommended"].sum() == 1
    fx = table[table["quantization"].eq("static_int8")].iloc[0]
    assert fx["status"] == "failed" and "FX static quantization" in fx["error"]  # the variant's own failure
    trials = table[table["quantization"].eq("none")].set_index("batch_size")
    assert trials.loc[1, "status"] == "ok" and bool(trials.loc[1, "recommended"])
    # raised by tuner's own code (the injection): `error`, not the variant's failure
    assert trials.loc[2, "status"] == "error" and "RuntimeError: injected fault: raise" in trials.loc[2, "error"]
    assert trials.loc[4, "status"] == "failed" and "trial process crashed: Aborted" in trials.loc[4, "error"]
    assert trials.loc[8, "status"] == "timeout" and "still running after 8 s" in trials.loc[8, "error"]
    assert trials.loc[16, "status"] == "oom" and "passed the 1500 MB cap" in trials.loc[16, "error"]
    assert "5 trial(s) not ok:" in r.stdout and "1 x oom: resident memory" in r.stdout

    parent, children = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny_models:untraceable")
    by_bs = {int(c.data.params["batch_size"]): c for c in children if c.data.params["quantization"] == "none"}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for bs, status in [(2, "error"), (4, "failed"), (8, "timeout"), (16, "oom")]:
        run = by_bs[bs]
        assert run.data.tags["tuner.status"] == status and run.info.status == "FAILED"
        assert run.data.tags["tuner.error"] == trials.loc[bs, "error"]
        assert "traceback.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]
    abort_tb = client.download_artifacts(by_bs[4].info.run_id, "traceback.txt", str(tmp_path))
    assert "Fatal Python error: Aborted" in Path(abort_tb).read_text()  # the native crash's own report
    assert "1 x timeout" in parent.data.tags["tuner.failures"]


def stopped(tmp_path: Path, cmd: list[str], sig: signal.Signals, when: Callable[[str], bool], log: str) -> str:
    """Run `cmd`, send `sig` once its output satisfies `when`; it must exit 130. Its output."""
    with open(tmp_path / log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=tuner_env(tmp_path), stdout=f, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and not when((tmp_path / log).read_text()):
            assert proc.poll() is None, (tmp_path / log).read_text()
            time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 130, (tmp_path / log).read_text()
    return (tmp_path / log).read_text()


def test_a_search_stopped_in_its_trials_then_in_its_confirmation_resumes_each_time(tmp_path):
    # SIGINT during the trials (Ray Tune's phase): the finished trials and their runs are
    # kept. SIGTERM, as a job scheduler stops a job, while the resumed search confirms its
    # finalists (outside the trial phase): the parent run is closed as interrupted, not left
    # RUNNING. Each --resume goes on without re-running a trial. (SIGTERM in the serving
    # stage: tests/test_serve_tuning.py.)
    space = write_space(tmp_path / "space.yaml", search={"trials": 4}, dimensions={"batch_size": [1, 2, 4, 8]},
                        confirm={"finalists": 1, "rounds": 3})  # fmt: skip
    cmd = [sys.executable, "-m", "tuner", "search", MODEL, "--space", str(space), "--weights", "random",
           "--output", "out"]  # fmt: skip
    progress = re.compile(r"^\[\s*\d+/4\] ", re.M)  # the recorder's line per finished trial
    first = stopped(tmp_path, cmd, signal.SIGINT, lambda out: len(progress.findall(out)) >= 2, "first.log")
    assert "interrupted by SIGINT" in first and f"--resume {tmp_path / 'out'}" in first
    kept = read_trials(tmp_path / "out" / "trials.csv")
    assert 2 <= len(kept) < 4
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent, children = runs(uri)
    assert parent.info.status == "KILLED" and parent.data.tags["tuner.status"] == "interrupted"
    assert parent.data.tags["tuner.resume_hint"] == f"python -m tuner search {MODEL} --resume {tmp_path / 'out'}"
    assert len(children) == len(kept)

    resume = [sys.executable, "-m", "tuner", "search", MODEL, "--resume", "out"]
    second = stopped(tmp_path, resume, signal.SIGTERM, lambda out: "confirming" in out, "second.log")
    assert f"resuming: {len(kept)} finished trial(s) kept" in second
    assert "interrupted by SIGTERM" in second and f"--resume {tmp_path / 'out'}" in second
    assert json.loads((tmp_path / "out" / "search.json").read_text())["status"] == "interrupted"
    parent, children = runs(uri)
    assert parent.info.status == "KILLED" and parent.data.tags["tuner.status"] == "interrupted"
    assert len(children) == 4

    r = tuner("search", MODEL, "--resume", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming: 4 finished trial(s) kept" in r.stdout and "RECOMMENDED" in r.stdout
    trials = read_trials(tmp_path / "out" / "trials.csv")
    assert len(trials) == 4 and trials["trial_id"].is_unique and trials["label"].is_unique  # nothing twice
    assert set(kept["trial_id"]) <= set(trials["trial_id"])
    parent, children = runs(uri)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert sorted(c.data.tags["ray.trial_id"] for c in children) == sorted(trials["trial_id"])
    assert json.loads((tmp_path / "out" / "search.json").read_text())["status"] == "finished"


def test_tracking_server_that_stops_mid_search_then_sync(tmp_path):
    space = write_space(tmp_path / "space.yaml", search={"trials": 4}, confirm={"finalists": 1, "rounds": 1})
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    with mlflow_server(server_dir) as url:
        port = int(url.rsplit(":", 1)[1])
        cmd = [sys.executable, "-m", "tuner", "search", MODEL, "--space", str(space), "--weights", "random",
               "--output", "out", "--tracking-uri", url]  # fmt: skip
        log = open(tmp_path / "search.log", "w")
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=tuner_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and "[1/4]" not in (tmp_path / "search.log").read_text():
            time.sleep(0.2)
    # The server is gone from here on; the search must finish and keep everything on disk.
    assert proc.wait(timeout=600) == 0, (tmp_path / "search.log").read_text()
    out = (tmp_path / "search.log").read_text()
    assert f"the MLflow store {url} stopped answering" in out and "report --sync" in out
    trials = read_trials(tmp_path / "out" / "trials.csv")
    assert len(trials) == 4 and trials["recommended"].sum() == 1
    missing = trials["mlflow_run_id"].isna().sum()
    assert missing >= 1  # these were measured while the store was down

    with mlflow_server(server_dir, port=port):  # same store, same address
        r = tuner("report", "--sync", "out", cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{missing} trial(s) uploaded" in r.stdout
        again = tuner("report", "--sync", "out", cwd=tmp_path, timeout=300)
        assert "0 trial(s) uploaded" in again.stdout  # idempotent: nothing is logged twice
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(f"tuner/{MODEL}")
        children = client.search_runs([exp.experiment_id], "tags.`tuner.kind` = 'trial'")
        assert sorted(c.data.tags["ray.trial_id"] for c in children) == sorted(trials["trial_id"])
        rec = [c for c in children if c.data.tags["tuner.recommended"] == "true"]
        assert len(rec) == 1 and "confirmed_p50_ms" in rec[0].data.metrics  # the search's end, synced
        # The flags the search's end could not write on runs logged before the outage: added.
        pareto = {c.data.tags["ray.trial_id"]: c.data.tags.get("tuner.pareto") for c in children}
        assert pareto == {t: str(bool(p)).lower() for t, p in zip(trials["trial_id"], trials["pareto"], strict=True)}
        synced = read_trials(tmp_path / "out" / "trials.csv")
        assert synced["mlflow_run_id"].notna().all()


def test_two_searches_on_one_sqlite_store_take_turns_and_one_in_which_every_trial_fails(tmp_path):
    # `a` is an ordinary search; `b`, started a second later on the same store, takes its turn
    # (one of the two waits for the other), and every one of its trials fails: it ends
    # without a recommendation.
    space_a = write_space(tmp_path / "a.yaml", search={"trials": 1}, confirm={"finalists": 0})
    space_b = write_space(
        tmp_path / "b.yaml",
        dimensions={**ONE_CONFIG, "batch_size": [1, 2, 4]},
        search={"trials": 3},
        inject_faults=[{"when": {}, "action": "raise"}],
    )
    procs = []
    for name, space in (("a", space_a), ("b", space_b)):
        cmd = [sys.executable, "-m", "tuner", "search", MODEL, "--space", str(space), "--weights", "random",
               "--output", name]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=tuner_env(tmp_path), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
        time.sleep(1)
    a, b = (p.communicate(timeout=600)[0] for p in procs)
    assert [p.returncode for p in procs] == [0, 1], (a, b)  # b ran, but has nothing to recommend
    assert ("another search is using" in a) + ("another search is using" in b) == 1, (a, b)  # one waited
    assert "3 trial(s) not ok:" in b and "3 x error: RuntimeError: injected fault: raise" in b
    assert "no recommendation: no trial finished ok" in b

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"tuner/{MODEL}")
    parents = {p.data.tags["tuner.output"]: p for p in client.search_runs([exp.experiment_id],
                                                                          "tags.`tuner.kind` = 'search'")}
    assert len(parents) == 2
    pa, pb = parents[str(tmp_path / "a")], parents[str(tmp_path / "b")]
    assert pa.info.status == "FINISHED"
    assert pb.info.status == "FAILED" and pb.data.tags["tuner.status"] == "no_result"
    assert pb.data.tags["tuner.failures"].startswith("3 x error: RuntimeError: injected fault")
    kids = {n: client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
            for n, p in (("a", pa), ("b", pb))}  # fmt: skip
    assert len(kids["a"]) == 1 and len(kids["b"]) == 3
    assert {c.data.tags["tuner.status"] for c in kids["b"]} == {"error"}
