"""The serving stage of `search --scenario server|offline` (docs/serving.md): after the model
search, a second search over how its finalists are served.

    run_serving
      candidates    the pick (its registered version) and up to `serving.variants` - 1 more
                    feasible Pareto finalists (the best throughput first, then latency; for
                    `server`, only those whose one call meets the bound at p90),
                    each logged as an MLflow model under its trial run (serving.json keeps them)
      Serve         started once on a free loopback port, HAProxy ingress, short drains
      trials        Ray Tune + Optuna (TPE) over the knobs of serve/tuning.py, one trial at a
                    time on the driver's node, which runs the load generator; the replicas go
                    where Ray Serve places them among the hardware class's nodes: each trial
                    deploys its service, measures it with LoadGen and deletes it; the first
                    trial is the pick's default service. Each finished trial is a row of
                    serving.csv and a child run tagged `tuner.stage=serving`
      publish       the best (search/serving_publish.py)

A signal stops the trials, keeps the finished ones and leaves the search resumable in this
stage: `--resume` goes on with the serving trials without repeating the model search.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuner.config.request import SearchRequest, save_state
from tuner.config.space import ServingSettings
from tuner.core.console import say
from tuner.core.errors import VariantUnsupported, one_line
from tuner.inputs.reference import Reference
from tuner.search.cluster import HardwareClass
from tuner.search.stopping import Interrupt, Stopped
from tuner.serve.tuning import (
    Candidate,
    Choices,
    any_point,
    default_point,
    describe_point,
    headline,
    knobs,
    layouts,
    point_key,
)
from tuner.tracking.store import PARENT_TAG, Tracker

if TYPE_CHECKING:
    from tuner.search.serving_publish import ServingOutcome

SERVING_CSV = "serving.csv"
SERVING_STATE = "serving.json"
POINT = ("variant", "max_batch_size", "batch_wait_ms", "layout", "ongoing_per_batch")  # serve/tuning.Choices


class NothingToServe(Exception):
    """The serving stage cannot start (said, and the search exits 1)."""


def candidates(req: SearchRequest, df: pd.DataFrame, ref: Reference | None, tracker: Tracker) -> list[Candidate]:
    """The finalists to serve (module docstring), logged once and kept in serving.json."""
    from mlflow.exceptions import MlflowException

    from tuner.deploy.register import log_candidate
    from tuner.serve.source import resolve, spec_for

    path = req.output / SERVING_STATE
    if path.exists():
        return [Candidate(**c) for c in json.loads(path.read_text())["candidates"]]
    doc = _recommended(req.output)
    if not doc.get("registered_model"):
        raise NothingToServe("the pick was not registered as an MLflow model (the parent run's `tuner.model_export` "
                             "tag says why), so there is nothing to serve")  # fmt: skip
    rows = [df.index[df["recommended"].astype(bool)][0]]
    ok = df[df["feasible"].astype(bool) & df["pareto"].astype(bool)]
    if req.space.serving.scenario == "server":  # one call slower than the bound cannot meet it
        ok = ok[ok["latency_p90_ms"] < req.space.serving.latency_bound_ms]
    ranked = [ok["stream_ips"].idxmax(), *ok.sort_values("latency_p50_ms").index] if len(ok) else []
    for i in ranked:
        if len(rows) < req.space.serving.variants and df.loc[i, "label"] not in set(df.loc[rows, "label"]):
            rows.append(i)
    out = []
    for n, i in enumerate(rows):
        row = df.loc[i]
        if n == 0:
            uri = f"models:/{doc['registered_model']}"
        else:
            say(f"serving: logging finalist {row['label']} as an MLflow model ...")
            try:
                uri = log_candidate(row, ref, tracker, req.model, str(doc.get("hardware", "")))  # type: ignore[arg-type]
            except (VariantUnsupported, RuntimeError, MlflowException, OSError, ImportError) as e:
                say(f"warning: finalist {row['label']} is not served: it could not be logged ({one_line(e)})")
                continue
        spec = spec_for(resolve(uri, req.tracking_uri))
        fixed = {k: v for k, v in spec.to_args().items() if k not in spec.knobs() and k != "route_prefix"}
        out.append(Candidate(str(row["label"]), uri, str(row["mlflow_run_id"]), fixed, spec.knobs()))
    path.write_text(json.dumps({"candidates": [asdict(c) for c in out]}, indent=2))
    return out


def _recommended(output: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((output / "recommended.yaml").read_text()) or {})


# A Ray cluster (its GCS address and the driver's node: a new `ray.init` is a new cluster,
# as each model of a nightly job has) -> the port its Serve listens on.
_SERVE: dict[tuple[str, str], int] = {}


def serve_port() -> int:
    """Ray Serve on this Ray (the model search's), HAProxy ingress on a free loopback port:
    started by the first caller (the nightly check of the champion's service, or the serving
    stage), then reused; its port."""
    import os

    import ray
    from ray import serve

    from tuner.serve.app import free_port, haproxy_env
    from tuner.serve.tuning import TRIAL_ENV

    context = ray.get_runtime_context()
    cluster = (context.gcs_address, context.get_node_id())
    if cluster in _SERVE:
        return _SERVE[cluster]
    port = free_port()
    env = {**haproxy_env(port, side_ports=True), **TRIAL_ENV}
    os.environ.update(env)
    log = logging.getLogger("ray.serve")
    log.disabled = True  # serve.start says "Started Serve in namespace ..." at INFO, whatever its level was
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    controller_options={"runtime_env": {"env_vars": env}})  # fmt: skip
    finally:
        log.disabled = False
    _SERVE[cluster] = port
    return port


def serving_trial(
    config: dict[str, Any], cands: list[dict[str, Any]], settings: dict[str, Any], port: int, nodes: dict[str, str]
) -> None:  # fmt: skip
    """The Ray Tune function trainable: one service deployed, measured and deleted
    (serve/tuning.py). Whatever goes wrong in it is this trial's failure, not the search's."""
    from ray import tune

    from tuner.serve.plot import steps_of
    from tuner.serve.tuning import measure_service

    s = ServingSettings(**settings)
    trial = tune.get_context().get_trial_id()
    cand = Candidate(**cands[int(config["variant"])])
    log_root = Path(tune.get_context().get_trial_dir()) / "loadgen"
    try:
        spec = cand.spec(knobs(config), route_prefix=f"/serving-{trial}")
        m = measure_service(spec, f"serving-{trial}", port, s, log_root, lambda line: None, nodes)
    except Exception as e:  # a fault isolation boundary, as a model trial's process is  # noqa: BLE001
        tune.report({"status": "failed", "error": one_line(e), "objective": 0.0})
        return
    tune.report({"status": "ok", "error": "", "objective": m.objective(), **m.figures(s.latency_bound_ms),
                 "log_dir": str(log_root), "replica_nodes": m.replica_nodes(),
                 "steps": json.dumps(steps_of(m.outcome))})  # fmt: skip


class ServingRecorder:
    """Each finished serving trial: a row of serving.csv, a progress line, a child run."""

    def __init__(self, req: SearchRequest, tracker: Tracker, parent_id: str, cands: list[Candidate]) -> None:
        self.req, self.tracker, self.parent_id, self.cands = req, tracker, parent_id, cands
        self.path = req.output / SERVING_CSV
        self.rows: list[dict[str, Any]] = pd.read_csv(self.path).to_dict("records") if self.path.exists() else []

    def record(self, config: dict[str, Any], result: dict[str, Any]) -> None:
        s = self.req.space.serving
        point: dict[str, Any] = {k: config[k] for k in POINT if k in config}
        cand = self.cands[int(point["variant"])]
        n = len(self.rows) + 1
        what = describe_point(point, [c.label for c in self.cands])
        figures = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid",
                                 "time_since_restore", "iterations_since_restore")}  # fmt: skip
        row = {"trial": n, **point, "label": cand.label, "model_uri": cand.model_uri, **knobs(point),
               "status": result.get("status", "failed"), "error": result.get("error", ""),
               "replica_nodes": result.get("replica_nodes", ""), "steps": result.get("steps", "[]"),
               **figures}  # fmt: skip
        params = {"variant": cand.label, "model_uri": cand.model_uri, "scenario": s.scenario,
                  "latency_bound_ms": s.latency_bound_ms, **knobs(point),
                  **{f"loadgen.{k}": getattr(s, k) for k in ("request", "duration_s", "min_queries", "max_steps")}}
        tags = {PARENT_TAG: self.parent_id, "tuner.kind": "serving", "tuner.stage": "serving",
                "tuner.variant": cand.label, "tuner.status": row["status"], "tuner.trial_run": cand.trial_run,
                "tuner.replica_nodes": row["replica_nodes"],
                **({"tuner.error": row["error"]} if row["error"] else {})}  # fmt: skip
        run_id = self.tracker.start_run(f"serving {n}: {what}", params, tags)
        self.tracker.log(run_id, metrics=figures)
        for summary in sorted(Path(str(result.get("log_dir", "/nonexistent"))).glob("*/mlperf_log_summary.txt")):
            self.tracker.log_artifact(run_id, summary, f"loadgen/{summary.parent.name}")
        self.tracker.finish(run_id, "FINISHED" if row["status"] == "ok" else "FAILED")
        row["mlflow_run_id"] = run_id
        self.rows.append(row)
        pd.DataFrame(self.rows).to_csv(self.path, index=False)
        on = f"; replicas on {row['replica_nodes']}" if row["replica_nodes"] else ""
        say(f"serving trial {n}/{s.trials}: {what} -> {headline(row, s)}{on}")


def run_serving(
    req: SearchRequest, klass: HardwareClass, tracker: Tracker, parent_id: str, df: pd.DataFrame,
    ref: Reference | None, started: float,
) -> ServingOutcome:  # fmt: skip
    """The stage (module docstring)."""
    from tuner.search.serving_publish import ServingOutcome, publish_serving

    s = req.space.serving
    save_state(req, parent_id, "running", time.time() - started, stage="serving")
    say(f"\nserving search ({s.scenario}{f', p99 <= {s.latency_bound_ms:g} ms' if s.scenario == 'server' else ''}): "
        f"{s.trials} trial(s), each a Ray Serve service measured with MLPerf LoadGen")  # fmt: skip
    if tracker.down:
        return ServingOutcome(pd.DataFrame(), None, False, "skipped: the MLflow store was unreachable")
    try:
        cands = candidates(req, df, ref, tracker)
    except NothingToServe as e:
        say(f"serving: skipped: {e}")
        tracker.log(parent_id, tags={"tuner.serving": f"skipped: {e}"})
        return ServingOutcome(pd.DataFrame(), None, False, f"skipped: {e}")
    say(f"  variants: {', '.join(f'{i}: {c.label} ({c.model_uri})' for i, c in enumerate(cands))}")
    recorder = ServingRecorder(req, tracker, parent_id, cands)
    remaining = s.trials - len(recorder.rows)
    if remaining > 0:
        _fit(req, klass, cands, recorder, remaining, parent_id, started)
    return publish_serving(req, tracker, parent_id, cands, pd.DataFrame(recorder.rows))


def _fit(
    req: SearchRequest, klass: HardwareClass, cands: list[Candidate], recorder: ServingRecorder, remaining: int,
    parent_id: str, started: float,
) -> None:  # fmt: skip
    import optuna
    import ray
    from ray import tune
    from ray.tune import Callback

    from tuner.search.sampling import DedupOptunaSearch

    s = req.space.serving
    first = default_point(cands[0].spec())
    choices = Choices.of(s, len(cands), layouts(klass.cores, len(klass.nodes), s.replicas), first)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A point measured once is not measured again (search/sampling.py); a failed trial counts as 0.
    searcher = DedupOptunaSearch(
        space=choices, metric=["objective"], mode=["max"],
        points_to_evaluate=[first] if not recorder.rows else None,
        sampler=optuna.samplers.TPESampler(seed=req.seed, n_startup_trials=min(5, max(2, s.trials // 2))),
        study_name=f"tuner-serving-{req.output.name}",
        storage=optuna.storages.RDBStorage(f"sqlite:///{req.output.resolve() / 'serving_optuna.db'}"),
        key=point_key, penalty={"objective": 0.0}, candidates=choices.all_points(), feasible=any_point,
    )  # fmt: skip
    for row in recorder.rows:  # a resumed stage
        searcher.remember(point_key(row), {"objective": float(row.get("objective", 0.0) or 0.0)})
    port = serve_port()
    say(f"  Ray Serve on 127.0.0.1:{port}; replicas on the nodes of {klass.name} "
        f"({', '.join(n.name for n in klass.nodes)}); the load generator on the driver's node")  # fmt: skip

    class _Record(Callback):
        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            recorder.record(trial.config, dict(trial.last_result or {"status": "failed", "error": "no result"}))

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            recorder.record(trial.config, {"status": "failed", "error": "the trial's actor failed"})

    here = ray.get_runtime_context().get_node_id()
    on_driver = tune.PlacementGroupFactory([{"memory": 2**20}], bundle_label_selector=[{"ray.io/node-id": here}])
    trainable = tune.with_parameters(serving_trial, cands=[asdict(c) for c in cands], settings=s.model_dump(),
                                     port=port, nodes=klass.selector())  # fmt: skip
    interrupt = Interrupt()
    tuner = tune.Tuner(
        tune.with_resources(trainable, on_driver),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, max_concurrent_trials=1),
        run_config=tune.RunConfig(name=f"serving-{int(time.time())}", storage_path=str(req.output.resolve()),
                                  verbose=0, callbacks=[_Record()], stop=interrupt.stopper(),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )  # fmt: skip
    with interrupt:
        tuner.fit()
    if interrupt.signal is not None:
        save_state(req, parent_id, "running", time.time() - started, stage="serving")
        raise Stopped(interrupt.signal)

