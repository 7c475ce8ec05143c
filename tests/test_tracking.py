"""The MLflow schema (docs/architecture.md §5), written to a temporary sqlite store by the same
driver-side recorder and finalizer a search uses; only Ray is left out.

The whole search's records (`logged_search`: about ten measurements, confirmation, plots,
the registered model) are slow; one fast test drives store.py and recorder.py with a real
sqlite store and a single measurement."""

from __future__ import annotations

import time

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tuner.config.request import SearchRequest
from tuner.config.space import SearchSpace, TimingConfig
from tuner.core.errors import TrackingError
from tuner.core.schema import TrialResult
from tuner.core.variant import MachineProbe, Variant
from tuner.decide.confirm import interleaved
from tuner.measure.hardware import detect
from tuner.outputs.tables import read_trials
from tuner.search.finalize import finalize
from tuner.tracking.recorder import TrialRecorder, close_parent
from tuner.tracking.store import Tracker
from tuner.trial.evaluate import TrialSettings, evaluate, time_probe, time_variant
from tuner.trial.process import classify

from conftest import FAST_TIMING, use_store

SETTINGS = TrialSettings(TimingConfig(**FAST_TIMING))
REQUIRED_METRICS = {"latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput_ips", "peak_rss_mb",
                    "build_s", "model_size_mb", "top1_agreement", "cosine_similarity", "max_abs_error",
                    "accuracy_drop", "speedup_vs_baseline"}  # fmt: skip


def in_process_confirm(ref):
    """The confirmation protocol without Ray: the same measurements, in this process."""

    def run(variants, rounds):
        out = {i: [] for i in range(len(variants))}
        for r, i in interleaved(variants, rounds):
            item = variants[i]
            res = time_probe(item, SETTINGS) if isinstance(item, MachineProbe) else time_variant(item, ref, SETTINGS)
            out[i].append({**res, "round": r})
        return out

    return run


@pytest.fixture(scope="module")
def small_ref():
    from tuner.inputs.models import ModelSpec
    from tuner.inputs.reference import prepare_reference

    return prepare_reference(ModelSpec("tiny_models:small_cnn", "random", 0), input_size=32, n_eval=8, n_calib=4)


@pytest.fixture(scope="module")
def logged_search(tmp_path_factory, small_ref):
    """One search's records, written once for every test of this module (read-only checks)."""
    tmp_path = tmp_path_factory.mktemp("logged")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)  # the local store's artifacts go to ./mlartifacts
        yield _logged_search(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", small_ref)


def _logged_search(tmp_path, tracking_uri, small_reference):
    tracker = Tracker(tracking_uri, "tuner/test")
    parent = tracker.start_parent("search test", {"trials": 3}, {"tuner.model": "tiny"})
    out = tmp_path / "out"
    out.mkdir()
    rec = TrialRecorder(tracker, parent, out, small_reference, detect(), total=4)
    base = Variant(threads=1)
    rec.record("t0", base.to_dict(), evaluate(base, small_reference, SETTINGS))
    fast = Variant(batch_size=4, threads=1, compile="torchscript")  # type: ignore[arg-type]
    rec.record("t1", fast.to_dict(), evaluate(fast, small_reference, SETTINGS))
    rec.record("t1", fast.to_dict(), evaluate(fast, small_reference, SETTINGS))  # delivered twice
    broken = Variant(precision="bf16", threads=1)  # type: ignore[arg-type]
    died = classify(None, "Traceback (most recent call last):\nValueError: boom\n")  # as Tune reports a crash
    rec.record("t2", broken.to_dict(), TrialResult.from_report(died))
    req = SearchRequest("tiny_models:small_cnn", SearchSpace(), tmp_path / "s.yaml", "random", None,
                        tracking_uri, "tuner/test", out)  # fmt: skip
    outcome = finalize(
        rec, tracker, parent, req, small_reference, time.time(), confirm_fn=in_process_confirm(small_reference)
    )
    return MlflowClient(tracking_uri), tracker, parent, outcome, out, small_reference


@pytest.mark.slow  # logged_search: a whole search's records (about ten measurements)
def test_child_runs_follow_the_schema(logged_search):
    client, tracker, parent, outcome, out, ref = logged_search
    children = tracker.children(parent)
    assert len(children) == 3, "one child per trial, duplicates dropped"
    by_trial = {c.data.tags["ray.trial_id"]: c for c in children}
    ok = by_trial["t1"]
    assert ok.data.tags["mlflow.parentRunId"] == parent
    assert REQUIRED_METRICS <= set(ok.data.metrics)
    assert ok.data.params == {"precision": "fp32", "quantization": "none", "batch_size": "4", "threads": "1",
                              "compile": "torchscript", "layout": "contiguous"}  # fmt: skip
    for tag in ("tuner.status", "tuner.pareto", "tuner.recommended", "tuner.stable", "hw.fingerprint",
                "hw.torch_version", "tuner.weights", "tuner.data"):  # fmt: skip
        assert tag in ok.data.tags, tag
    assert ok.data.tags["tuner.weights"].startswith("random-init")
    assert ok.data.tags["tuner.data"].startswith("synthetic")
    failed = by_trial["t2"]
    assert failed.data.tags["tuner.status"] == "failed"
    assert failed.data.tags["tuner.error"] == "ValueError: boom"
    assert failed.info.status == "FAILED"
    assert "traceback.txt" in [a.path for a in client.list_artifacts(failed.info.run_id)]
    assert by_trial["t0"].data.tags["tuner.baseline"] == "true"


@pytest.mark.slow  # logged_search: a whole search's records (about ten measurements)
def test_pareto_and_recommendation_tags_match_the_outputs(logged_search):
    client, tracker, parent, outcome, out, ref = logged_search
    tags = {c.data.tags["ray.trial_id"]: c.data.tags for c in tracker.children(parent)}
    table = read_trials(out / "trials.csv")
    assert list(table["trial_id"]) == ["t0", "t1", "t2"] and bool(table.loc[0, "is_baseline"])
    for _, r in table.iterrows():
        assert tags[r["trial_id"]]["tuner.pareto"] == str(bool(r["pareto"])).lower()
        assert tags[r["trial_id"]]["tuner.recommended"] == str(bool(r["recommended"])).lower()
    assert table["recommended"].sum() == 1
    assert set(read_trials(out / "pareto.csv")["trial_id"]) == set(table[table["pareto"]]["trial_id"])
    rec = yaml.safe_load((out / "recommended.yaml").read_text())
    assert rec["mlflow"]["parent_run_id"] == parent
    assert rec["variant"]["batch_size"] in (1, 4)


@pytest.mark.slow  # logged_search: a whole search's records (about ten measurements)
def test_parent_run_summary_and_artifacts(logged_search):
    client, tracker, parent, outcome, out, ref = logged_search
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert {"best_latency_p50_ms", "best_throughput_ips", "recommended_latency_p50_ms", "n_failed"} <= set(
        run.data.metrics
    )
    assert run.data.tags["tuner.recommended_run_id"] in {c.info.run_id for c in tracker.children(parent)}
    arts = {a.path for a in client.list_artifacts(parent)}
    assert {"trials.csv", "pareto.csv", "recommended.yaml"} <= arts


@pytest.mark.slow  # logged_search: a whole search's records (about ten measurements)
def test_pareto_plots_and_description_for_reviewers(logged_search):
    client, tracker, parent, outcome, out, ref = logged_search
    arts = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto.html", "pareto.png"} <= arts
    html = (out / "pareto.html").read_text()
    assert "Plotly.newPlot" in html and '<script src="https://cdn' not in html  # plotly.js embedded: offline
    rec_label = outcome.recommended["label"]
    assert f"recommended: {rec_label}" in html and "baseline: fp32 bs1 t1 eager nchw" in html
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.startswith("## Search of `tiny_models:small_cnn`: 3 trials, 2 ok")
    assert f"### Recommended: `{rec_label}`" in note and "random-init (seed 0)" in note and "synthetic" in note
    assert "1 x **failed**: ValueError: boom" in note  # failures by reason
    for child in tracker.children(parent):  # the filterable tags are on every child
        assert {"tuner.pareto", "tuner.recommended", "tuner.status", "tuner.stable"} <= set(child.data.tags)
        params = {**child.data.params, "batch_size": int(child.data.params["batch_size"]),
                  "threads": int(child.data.params["threads"])}  # fmt: skip
        assert child.data.tags["mlflow.runName"] == Variant.from_dict(params).label


@pytest.mark.slow  # logged_search: a whole search's records (about ten measurements)
def test_recommended_model_is_registered_and_reproduces_the_variant(logged_search, request, tmp_path):
    import mlflow.pyfunc

    from tuner.build import build
    from tuner.decide.pareto import variant_of
    from tuner.tracking.store import registered_name

    client, tracker, parent, outcome, out, ref = logged_search
    use_store(request, tracker.uri)
    name = registered_name("tiny_models:small_cnn")
    assert name == "tuner-tiny_models_small_cnn"
    version = client.get_model_version_by_alias(name, "candidate")
    assert version.run_id == parent
    tags = client.get_run(parent).data.tags
    assert tags["tuner.registered_model"] == f"{name}/{version.version}"
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate", dst_path=str(tmp_path))
    variant = variant_of(outcome.recommended)
    x = ref.data.inputs[: variant.batch_size]
    got = torch.as_tensor(model.predict(x.numpy()))
    built = build(ref.load_module(), variant, ref.data.calibration)
    with torch.inference_mode():
        want = built.run(built.prepare(x)).float()
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4), (got - want).abs().max()
    assert tuple(model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][1:]) == tuple(ref.shape)


@pytest.mark.slow  # logged_search: a whole search's records (about ten measurements)
def test_finalists_are_confirmed_with_intervals(logged_search):
    client, tracker, parent, outcome, out, ref = logged_search
    table = read_trials(out / "trials.csv")
    confirmed = table[table["confirmed_p50_ms"].notna()]
    # The recommendation and the baseline are always re-measured (the failed trial never).
    assert bool(table.loc[table["recommended"], "confirmed_p50_ms"].notna().all())
    assert bool(confirmed["is_baseline"].any()) and "t2" not in set(confirmed["trial_id"])
    assert (confirmed["confirmed_p50_ms_low"] <= confirmed["confirmed_p50_ms"]).all()
    assert (confirmed["confirmed_p50_ms"] <= confirmed["confirmed_p50_ms_high"]).all()
    assert (confirmed["confirmed_rounds"] == 3).all()
    tags = {c.data.tags["ray.trial_id"]: c for c in tracker.children(parent)}
    for tid in confirmed["trial_id"]:
        assert tags[tid].data.tags["tuner.confirmed"] == "true"
        assert "confirmed_p50_ms_high" in tags[tid].data.metrics
    rec = yaml.safe_load((out / "recommended.yaml").read_text())
    assert rec["confirmed"]["confirmed_p50_ms"] > 0 and rec["figures"]["latency_p50_ms"] > 0
    assert "confirmed over" in rec["reason"]


def test_the_machine_probe_runs_in_the_confirmation_rounds(logged_search):
    """Every confirmed row has its fraction of the ceiling measured in the same rounds (the
    nightly check's reference), and the probe's p50 is on the parent run."""
    client, tracker, parent, outcome, out, ref = logged_search
    confirmed = read_trials(out / "trials.csv").query("confirmed_p50_ms.notna()")
    low, mid, high = (confirmed[f"confirmed_ceiling_fraction{s}"] for s in ("_low", "", "_high"))
    assert ((0 < low) & (low <= mid) & (mid <= high)).all(), confirmed
    # One probe for both (fp32): each fraction is k x batch / p50 over the same probe p50.
    per_call = confirmed["batch_size"] / confirmed["confirmed_p50_ms"]
    k = mid / per_call
    assert len(confirmed) == 2 and k.max() / k.min() < 1.001, k
    metrics = client.get_run(parent).data.metrics
    assert metrics["probe_p50_ms.fp32"] > 0


def test_recorder_writes_each_trial_to_the_store_the_table_and_the_terminal(tmp_path, monkeypatch, small_reference,
                                                                           capsys):  # fmt: skip
    """store.Tracker + recorder.TrialRecorder on a real sqlite store: one measured trial, one crash."""
    monkeypatch.chdir(tmp_path)  # the local store's artifacts go to ./mlartifacts
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "tuner/fast")
    parent = tracker.start_parent("search fast", {"trials": 2}, {"tuner.model": "tiny"})
    out = tmp_path / "out"
    out.mkdir()
    rec = TrialRecorder(tracker, parent, out, small_reference, detect(), total=2)
    base = Variant(threads=1)
    rec.start("t0")
    rec.record("t0", base.to_dict(), evaluate(base, small_reference, SETTINGS))
    died = TrialResult.from_report(classify(None, "Traceback (most recent call last):\nValueError: boom\n"))
    rec.record("t0", base.to_dict(), died)  # delivered twice: the first delivery stands
    other = Variant(batch_size=2, threads=1)
    rec.record("t1", other.to_dict(), died)
    close_parent(tracker, parent, rec.table().iloc[0])

    table = read_trials(out / "trials.csv")
    assert list(table["trial_id"]) == ["t0", "t1"] and list(table["status"]) == ["ok", "failed"]
    assert list(table["label"]) == [base.label, other.label] and list(table["is_baseline"]) == [True, False]
    assert table.loc[0, "speedup_vs_baseline"] == 1.0 and table.loc[0, "process_wall_s"] > 0
    assert (out / "tracebacks" / "t1.txt").read_text().endswith("ValueError: boom\n")

    children = {c.data.tags["ray.trial_id"]: c for c in tracker.children(parent)}
    assert set(children) == {"t0", "t1"}
    assert {children[t].info.run_id for t in ("t0", "t1")} == set(table["mlflow_run_id"])
    ok, failed = children["t0"], children["t1"]
    assert ok.info.status == "FINISHED" and ok.data.tags["tuner.status"] == "ok"
    assert ok.data.tags["tuner.baseline"] == "true" and ok.data.tags["hw.fingerprint"] == detect().fingerprint
    assert ok.data.tags["tuner.weights"] == small_reference.weights_label
    assert {"latency_p50_ms", "throughput_ips", "build_s", "top1_agreement", "speedup_vs_baseline"} <= set(
        ok.data.metrics
    )
    assert ok.data.metrics["latency_p50_ms"] == pytest.approx(table.loc[0, "latency_p50_ms"])
    assert ok.data.params == {k: str(v) for k, v in base.to_dict().items()}
    assert failed.info.status == "FAILED" and failed.data.tags["tuner.error"] == "ValueError: boom"
    assert "latency_p50_ms" not in failed.data.metrics
    assert "traceback.txt" in [a.path for a in MlflowClient(uri).list_artifacts(failed.info.run_id)]

    run = tracker.run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["tuner.recommended_run_id"] == ok.info.run_id
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines if ln.startswith("[")] == [["[1/2]", "ok"], ["[2/2]", "failed"]]
    assert lines[-1].endswith("ValueError: boom")


def test_unreachable_store_is_a_tracking_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TrackingError, match=f"--tracking-uri http://127.0.0.1:{port}: no MLflow server answers"):
        Tracker(f"http://127.0.0.1:{port}", "x")
    with pytest.raises(TrackingError, match="is a folder"):
        Tracker(f"sqlite:///{tmp_path}", "x")  # a folder, not a database file
