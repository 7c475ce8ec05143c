"""A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: one raylet per
node, each with its own CPUs and labels), and the real CLI connected to it with `--address`.

Two hardware classes by label: "a" (two nodes) and "b" (one node, started without
`RAY_worker_niceness=0`, as Ray's default leaves it, and declaring one GPU to Ray, which this
machine does not have). One CPU per node; the head runs no trials.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuner.outputs.tables import read_trials
from tuner.search.cluster import CLASS_LABEL

from conftest import FAST_TIMING, TESTS, mlflow_server, tuner, tuner_env, write_space

pytestmark = pytest.mark.slow
MODEL = "tiny_models:small_cnn"
HANG = {"precision": "fp32", "quantization": "none", "compile": "eager", "layout": "contiguous"}  # one config


@contextlib.contextmanager
def ray_cluster(classes: dict[str, int], niced: tuple[str, ...] = (), gpus: tuple[str, ...] = ()):
    """Start a head (no CPUs) and `classes[name]` one-CPU nodes labelled `name`; yields the
    cluster and each class's node ids. Nodes of the `niced` classes keep Ray's default worker
    niceness; nodes of the `gpus` classes declare one GPU to Ray. The cluster's processes
    inherit this environment: the test's models on the path."""
    from ray.cluster_utils import Cluster

    saved = dict(os.environ)
    os.environ.update({"PYTHONPATH": str(TESTS), "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0",
                       # a lost node is known in about 2 s instead of Ray's default 15
                       "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "2"})
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        ids: dict[str, list[str]] = {}
        for name, count in classes.items():
            if name in niced:
                os.environ.pop("RAY_worker_niceness", None)
            else:
                os.environ["RAY_worker_niceness"] = "0"
            gpu = int(name in gpus)
            nodes = [cluster.add_node(num_cpus=1, num_gpus=gpu, labels={CLASS_LABEL: name}) for _ in range(count)]
            ids[name] = [n.node_id for n in nodes]
        os.environ.clear()
        os.environ.update(saved)
        yield cluster, ids
    finally:
        os.environ.clear()
        os.environ.update(saved)
        cluster.shutdown()


def start_search(work: Path, address: str, hardware: str | None, trials: int, **space: object) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    space["search"] = {"trials": trials, **space.get("search", {})}  # type: ignore[dict-item]
    path = write_space(work / "space.yaml", **space)
    args = ["search", MODEL, "--space", str(path), "--weights", "random", "--output", "out", "--address", address]
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args, *(["--hardware", hardware] if hardware else [])],
        cwd=work, env=tuner_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def short(node_ids: list[str]) -> set[str]:
    return {i[:6] for i in node_ids}


def node_ids_of(names) -> set[str]:
    """`host:abcdef` (search/cluster.py `node_name`) -> the start of the Ray node id."""
    return {str(n).rsplit(":", 1)[1] for n in names if isinstance(n, str) and n}


@pytest.fixture(scope="module")
def two_classes():
    with ray_cluster({"a": 2, "b": 1}, niced=("b",), gpus=("b",)) as c:
        yield c


def test_without_hardware_the_search_lists_the_classes_present(two_classes, tmp_path):
    cluster, ids = two_classes
    # The driver's node is the head, which runs no trials, and both classes have its CPU.
    r = tuner("search", MODEL, "--weights", "random", "--address", cluster.address, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "choose one with --hardware CLASS" in r.stderr
    assert "a: 2 node(s) of 1 CPU(s)" in r.stderr and "b: 1 node(s) of 1 CPU(s)" in r.stderr
    bad = tuner("search", MODEL, "--weights", "random", "--address", cluster.address, "--hardware", "c", cwd=tmp_path)
    assert bad.returncode == 2 and "--hardware c: no such hardware class" in bad.stderr
    # b's node declares a GPU to Ray; torch on it sees none (this machine has no GPU), so a
    # search on cuda is refused, saying what each side reports.
    gpu = tuner("search", MODEL, "--weights", "random", "--address", cluster.address, "--hardware", "b",
                "--device", "cuda", cwd=tmp_path)  # fmt: skip
    assert gpu.returncode == 2, gpu.stdout + gpu.stderr
    assert "--device cuda: hardware class b has no GPU that torch can use" in gpu.stderr
    assert ": 1 GPU(s) in Ray, torch sees none" in gpu.stderr


def test_a_lost_node_fails_its_trial_and_the_search_finishes_on_the_others(tmp_path):
    with ray_cluster({"a": 2}) as (cluster, ids):
        # The baseline runs on one node while the second trial (batch 2) hangs on the other; when
        # the baseline's line names its node, the other node is killed under the hanging trial.
        proc = start_search(
            tmp_path, cluster.address, "a", 4,
            dimensions={"batch_size": [1, 2, 4], "compile": ["eager"]},
            search={"enqueue": [{"batch_size": 2}]},
            limits={"trial_timeout_s": 60},
            inject_faults=[{"when": {**HANG, "batch_size": 2}, "action": "hang"}],
        )  # fmt: skip
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[1/4] on "):
                break
        first = line.split(" on ", 1)[1].split()[0].rsplit(":", 1)[1]
        (other,) = [n for n in cluster.worker_nodes if n.node_id[:6] != first]
        killed_at = time.time()
        cluster.remove_node(other, allow_graceful=False)
        rest, err = proc.communicate(timeout=600)
        stdout = "".join(lines) + rest
        assert proc.returncode == 0, stdout + err
    assert time.time() - killed_at < 60 + 120  # not the trial's 60 s timeout on a dead node, then some
    trials = read_trials(tmp_path / "out" / "trials.csv").set_index("batch_size")
    assert len(trials) == 4, trials
    lost = trials.loc[2]
    assert lost["status"] == "failed" and lost["error"].startswith("node lost"), lost["error"]
    ok = trials[trials["status"].eq("ok")]
    assert len(ok) == 3 and node_ids_of(ok["node"]) == {first}  # the rest on the node that remained
    assert bool(trials["recommended"].any())
    assert "--resume" not in stdout


def test_a_nightly_job_runs_the_searches_of_two_classes_at_the_same_time_each_on_its_own_nodes(two_classes, tmp_path):
    """Two searches, one per class, at the same time (the nightly job's processes): each runs,
    confirms and recommends on its own class's nodes only, and each has its own champion."""
    import yaml

    cluster, ids = two_classes
    model = {
        "model": MODEL, "weights": "random", "time_budget_minutes": 5,
        "overrides": {
            "dimensions": {"batch_size": [1, 2, 4], "compile": ["eager", "torchscript"]},
            "eval": {"samples": 8, "calibration_samples": 4, "input_size": 32},
            "timing": FAST_TIMING, "confirm": {"finalists": 1, "rounds": 1},
        },
    }  # fmt: skip
    with mlflow_server(tmp_path) as url:  # a server: searches of two classes write at the same time
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({
            "tracking_uri": url, "output": str(tmp_path / "runs"),
            "models": [{**model, "hardware": "a", "trials": 4}, {**model, "hardware": "b", "trials": 2}],
        }))  # fmt: skip
        env = {**tuner_env(tmp_path), "RAY_ADDRESS": cluster.address}  # how `ray job submit` runs it
        r = subprocess.run([sys.executable, "-m", "tuner", "nightly", str(job)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "running 2 hardware classes at the same time: a, b" in r.stdout
        out = {k: "".join(ln[4:] + "\n" for ln in r.stdout.splitlines() if ln.startswith(f"[{k}] ")) for k in "ab"}

        (run,) = (tmp_path / "runs").iterdir()
        report = json.loads((run / "nightly-report.json").read_text())["models"]
        assert [(m["hardware"], bool(m["recommended"])) for m in report] == [("a", True), ("b", True)]

        client = MlflowClient(url)
        exp = client.get_experiment_by_name(f"tuner/{MODEL}")
        parents = {p.data.tags["tuner.hardware_class"]: p for p in client.search_runs([exp.experiment_id],
                   "tags.`tuner.nightly` = 'true'")}  # fmt: skip
        assert set(parents) == {"a", "b"}
        a, b = parents["a"].info, parents["b"].info
        assert a.start_time < b.end_time and b.start_time < a.end_time  # they ran at the same time
        for k, parent in parents.items():
            assert parent.data.params["hardware_class"] == k
            trials = read_trials(Path(parent.data.tags["tuner.output"]) / "trials.csv")
            # Every trial and every confirmation measurement ran on the class's nodes, and says so.
            assert node_ids_of(trials["node"]) <= short(ids[k]), trials["node"]
            assert trials["node_fingerprint"].str.len().eq(12).all()
            confirmed = trials["confirmed_nodes"].dropna().str.split(",").explode()
            assert len(confirmed) and node_ids_of(confirmed) <= short(ids[k])
            fingerprints = set(trials["confirmed_fingerprints"].dropna().str.split(",").explode())
            assert fingerprints == set(trials["node_fingerprint"])  # one class: one fingerprint
            rec = trials[trials["recommended"]]
            assert len(rec) == 1 and node_ids_of(rec["node"]) <= short(ids[k])
            children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
            assert node_ids_of(c.data.tags.get("tuner.node") for c in children) <= short(ids[k])
            assert f"hardware class {k}: {len(ids[k])} of the cluster's 3 node(s) with CPUs, 2 class(es)" in out[k]
            assert " on " in out[k].split("[1/", 1)[1].splitlines()[0]  # the progress line names the node
            # The registered version names its class; each class has its own champion.
            name, number = parent.data.tags["tuner.registered_model"].rsplit("/", 1)  # e.g. tuner-<model>/1
            assert client.get_model_version(name, number).tags["tuner.hardware_class"] == k
            assert client.get_model_version_by_alias(name, f"champion-{k}").version == number

    # Class a has two nodes: two trials at a time, one per node.
    assert node_ids_of(read_trials(Path(parents["a"].data.tags["tuner.output"]) / "trials.csv")["node"]) == short(
        ids["a"]
    )
    assert "2 at a time (one per node of a)" in out["a"]
    # Class b's node runs Ray's workers at nice 15: the search says so, and how to fix it.
    assert "warning: Ray's workers run at nice 15 on 1 node(s)" in out["b"]
    assert "RAY_worker_niceness=0 ray start" in out["b"]
    assert "workers run at nice" not in out["a"]
