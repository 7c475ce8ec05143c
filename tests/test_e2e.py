"""End to end: the real CLI in a subprocess, a real local Ray, a real sqlite MLflow store.

Tiny budgets: resnet18 at 32x32 for a few trials. Figures are real but never asserted
against a clock; the checks are about structure and selection logic.
"""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tuner.config.space import Constraints
from tuner.core.schema import STATUSES
from tuner.core.variant import Variant
from tuner.decide.pareto import feasible_mask, pareto_mask
from tuner.outputs.tables import read_trials

from conftest import tuner, write_space
from tiny_models import train_small_cnn

pytestmark = pytest.mark.slow
TRIALS = 5


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    space = write_space(
        work / "space.yaml",
        search={"trials": TRIALS},
        dimensions={"batch_size": [1, 2], "compile": ["eager", "torchscript"]},
        confirm={"finalists": 2, "rounds": 2},
    )
    r = tuner("search", "resnet18", "--space", str(space), "--weights", "random", "--output", "out", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    uri = f"sqlite:///{work / 'mlflow.db'}"  # the default store: ./mlflow.db, absolute
    return work, work / "out", uri, r


def test_progress_lines_and_recommendation(search):
    work, out, uri, r = search
    for i in range(1, TRIALS + 1):
        assert f"[{i}/{TRIALS}]" in r.stdout
    assert "RECOMMENDED:" in r.stdout and str(out) in r.stdout
    assert "mlflow ui --backend-store-uri" in r.stdout
    assert "Trial status" not in r.stdout + r.stderr  # Ray's own progress tables stay quiet
    assert "RANDOM-INIT" not in r.stderr  # --weights random was asked for: no warning banner
    assert "confirming" in r.stdout and "confirmed p50" in r.stdout
    assert "ceiling: fp32" in r.stdout


def test_outputs(search):
    work, out, uri, r = search
    trials = read_trials(out / "trials.csv")
    assert len(trials) == TRIALS
    first = trials.iloc[0]
    assert bool(first["is_baseline"]) and first["label"] == "fp32 bs1 t2 eager nchw"
    for col in ("precision", "quantization", "batch_size", "threads", "compile", "layout", "latency_p50_ms",
                "latency_p90_ms", "latency_p99_ms", "throughput_ips", "top1_agreement", "status", "error"):  # fmt: skip
        assert col in trials.columns, col
    assert set(trials["status"]) <= {"ok", "failed", "infeasible", "inaccurate"}
    pareto = read_trials(out / "pareto.csv")
    assert set(pareto["trial_id"]) == set(trials[trials["pareto"]]["trial_id"])

    # The recommended row is non-dominated and meets the constraints (recomputed here).
    rec = yaml.safe_load((out / "recommended.yaml").read_text())
    limits = Constraints(max_accuracy_drop=0.01)
    feas = feasible_mask(trials, limits)
    front = pareto_mask(trials, feas)
    (idx,) = trials.index[trials["recommended"]]
    assert feas[idx] and front[idx]
    assert rec["label"] == trials.loc[idx, "label"]
    assert rec["weights_label"].startswith("random-init") and rec["data"].startswith("synthetic")
    assert rec["device"] == "cpu"  # where it was measured: this machine has no GPU

    # Every ok trial has its fraction of the hardware ceiling; finalists have confirmed intervals.
    ok = trials[trials["status"] == "ok"]
    assert ok["ceiling_fraction"].between(0, 1.5).all()
    assert trials.loc[idx, "confirmed_p50_ms_low"] <= trials.loc[idx, "confirmed_p50_ms"]
    assert rec["confirmed"]["confirmed_rounds"] == 2


def test_mlflow_tree(search):
    work, out, uri, r = search
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tuner/resnet18")
    parents = client.search_runs([exp.experiment_id], "tags.`tuner.kind` = 'search'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tuner.weights"].startswith("random-init")
    assert parent.data.tags["tuner.device"] == "cpu" and parent.data.params["device"] == "cpu"
    assert parent.data.tags["hw.gpu"] == "none" and parent.data.tags["hw.gpu_driver"] == "none"
    assert {"trials.csv", "pareto.csv", "recommended.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == TRIALS
    assert len({c.data.tags["ray.trial_id"] for c in children}) == TRIALS
    assert sum(c.data.tags["tuner.recommended"] == "true" for c in children) == 1
    trials = read_trials(out / "trials.csv")
    n_pareto = len(client.search_runs([exp.experiment_id], "tags.`tuner.pareto` = 'true'"))
    assert n_pareto == int(trials["pareto"].sum()) >= 1
    for c in children:
        if c.data.tags["tuner.status"] == "ok":
            assert {
                "latency_p50_ms",
                "latency_p90_ms",
                "throughput_ips",
                "accuracy_drop",
                "speedup_vs_baseline",
            } <= set(c.data.metrics)


def test_measure_reproduces_the_recommended_variant(search):
    work, out, uri, r = search
    m = tuner("measure", "resnet18", "--config", str(out / "recommended.yaml"), "--space", str(work / "space.yaml"),
              "--json", "--device", "cpu", cwd=work)  # fmt: skip
    assert m.returncode == 0, m.stderr
    fig = json.loads(m.stdout.strip().splitlines()[-1])
    rec = yaml.safe_load((out / "recommended.yaml").read_text())
    assert fig["status"] == "ok", fig["error"]
    assert fig["device"] == "cpu"
    assert {k: fig[k] for k in rec["variant"]} == rec["variant"]
    assert Variant.from_dict(rec["variant"]).label == rec["label"]  # the same variant, by its label
    assert fig["top1_agreement"] == 1.0
    # The same variant re-measured in another process on a noisy shared CPU: the same order
    # of magnitude, compared as a ratio with a generous band (never against a clock).
    searched, measured = rec["figures"]["latency_p50_ms"], fig["latency_p50_ms"]
    assert searched > 0 and measured > 0
    assert 1 / 3 <= measured / searched <= 3, f"search p50 {searched:.2f} ms, measure p50 {measured:.2f} ms"


def test_terminal_shows_tuners_own_lines_only(search):
    """No third-party noise around tuner's lines: warnings, progress bars, log lines."""
    work, out, uri, r = search
    text = r.stdout + r.stderr
    for noise in ("UserWarning", "FutureWarning", "DeprecationWarning", "warnings.warn", "Downloading",
                  "INFO mlflow", "alembic", "Traceback"):  # fmt: skip
        assert noise not in text, f"{noise!r} in the search's output:\n{text[-4000:]}"


def test_measure_model_uri_measures_the_registered_pick(search):
    work, out, uri, r = search
    m = tuner("measure", "--model-uri", "models:/tuner-resnet18@candidate", "--tracking-uri", uri,
              "--space", str(work / "space.yaml"), "--json", cwd=work)  # fmt: skip
    assert m.returncode == 0, m.stdout + m.stderr
    fig = json.loads(m.stdout.strip().splitlines()[-1])
    rec = yaml.safe_load((out / "recommended.yaml").read_text())
    assert fig["status"] == "ok", fig["error"]
    assert {k: fig[k] for k in rec["variant"]} == rec["variant"]  # the registered variant is the pick
    assert fig["top1_agreement"] == 1.0
    # Another process on a noisy shared CPU: a generous band, never a clock.
    assert fig["registered_confirmed_p50_ms"] > 0 and 1 / 3 <= fig["p50_vs_confirmed"] <= 3, fig


def test_report_reads_the_search_back(search):
    work, out, uri, r = search
    rep = tuner("report", cwd=work)
    assert rep.returncode == 0, rep.stderr
    rec = yaml.safe_load((out / "recommended.yaml").read_text())
    parent = rec["mlflow"]["parent_run_id"]
    assert f"search {parent} (tuner/resnet18), {TRIALS} trials" in rep.stdout
    assert f"RECOMMENDED: {rec['label']}" in rep.stdout
    trials = read_trials(out / "trials.csv")
    assert len(trials) == TRIALS and trials["trial_id"].is_unique
    assert trials["status"].isin(STATUSES).all(), trials["status"]
    assert (trials["status"] == "ok").sum() >= 1 and bool(trials.loc[trials["recommended"], "status"].eq("ok").all())
    # What MLflow holds, read back by `report`, is trial for trial what trials.csv says.
    csv = tuner("report", "--format", "csv", cwd=work)
    assert csv.returncode == 0, csv.stderr
    back = read_trials(io.StringIO(csv.stdout))
    assert dict(zip(back["trial_id"], back["status"], strict=True)) == dict(
        zip(trials["trial_id"], trials["status"], strict=True)
    )
    assert back["status"].value_counts().to_dict() == trials["status"].value_counts().to_dict()


def test_report_formats_and_comparison(search):
    work, out, uri, r = search
    trials = read_trials(out / "trials.csv")
    csv = tuner("report", "--format", "csv", cwd=work)
    assert csv.returncode == 0, csv.stderr
    table = read_trials(io.StringIO(csv.stdout))
    assert sorted(table["trial_id"]) == sorted(trials["trial_id"])
    records = json.loads(tuner("report", "--format", "json", cwd=work).stdout)
    assert {r["label"] for r in records} == set(trials["label"])
    md = tuner("report", "--format", "markdown", cwd=work).stdout.splitlines()
    assert md[0].startswith("| trial |") and md[1].startswith("|---|") and len(md) == 2 + len(trials)
    parent = yaml.safe_load((out / "recommended.yaml").read_text())["mlflow"]["parent_run_id"]
    same = tuner("report", "--run-id", parent, "--baseline-run-id", parent, "--format", "json", cwd=work)
    cmp = pd.DataFrame(json.loads(same.stdout))
    assert set(cmp["in"]) == {"both"} and (cmp["latency_p90_ms_change"] == 0).all()  # a search against itself
    bad = tuner("report", "--baseline-run-id", "0" * 32, cwd=work)
    assert bad.returncode == 2 and "--baseline-run-id 00000000000000000000000000000000: not found" in bad.stderr


def test_user_model_with_its_checkpoint_and_labeled_data_under_a_time_budget(tmp_path):
    """`module:factory` + `--weights PATH` + a labeled `--data` folder, through the CLI; the
    time budget (0.6 min from the search's start, about half of it before the first trial)
    stops its 40 trials and keeps what finished."""
    train_small_cnn(tmp_path)
    space = write_space(
        tmp_path / "space.yaml",
        search={"trials": 40, "time_budget_minutes": 0.6},
        dimensions={"quantization": ["none", "static_int8"], "batch_size": [1, 2, 4, 8, 16], "threads": [1]},
    )
    r = tuner("search", "tiny_models:small_cnn", "--space", str(space), "--weights", "small_cnn.pt",
              "--data", "val", "--output", "out", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"weights: file:{tmp_path / 'small_cnn.pt'}" in r.stdout
    assert f"data:    labeled folder {tmp_path / 'val'} (3 classes, mapped by integer folder names)" in r.stdout
    trials = read_trials(tmp_path / "out" / "trials.csv")
    assert 1 <= len(trials) < 40
    assert f"the time budget stopped the search after {len(trials)} of 40 trials" in r.stdout
    assert trials["recommended"].sum() == 1
    ok = trials[trials["status"] == "ok"]
    assert (ok["quality"] == ok["top1"]).all() and ok["top5"].notna().all()
    assert ok["top1"].iloc[0] >= 0.9  # the baseline on real labels: the model learned the classes
    # the fast JPEG decode is judged on photo-like JPEGs: the --data images are small PNGs, which it never scales
    assert "(none of the search's " in r.stdout and "--data image(s) is a JPEG the fast path scales)" in r.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["search", "no_such_model"], "unknown model `no_such_model`"),
        (["search", "resnet18", "--space", "missing.yaml"], "missing.yaml: space file not found"),
        (["search", "resnet18", "--trials", "0"], "`--trials` (search.trials)"),
        (["measure", "resnet18", "--config", "missing.yaml"], "--config missing.yaml"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, args, fragment):
    r = tuner(*args, "--weights", "random", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr
