"""One search, top to bottom: reference -> Ray Tune + OptunaSearch -> MLflow -> selection -> outputs.

run_search(request)
  1. open the MLflow store (fails fast, before anything runs) and resolve the weights
  2. compute the fp32 eager reference once (shared with trials via Ray's object store)
  3. Ray Tune: OptunaSearch (multi-objective), trial 0 = baseline, one trial at a time,
     each in a fresh process (`reuse_actors=False`), all cores of a node per trial
  4. TrialRecorder (a Tune callback in the driver): one MLflow child run, one progress
     line and a rewritten trials.csv per finished trial, so nothing is lost
  5. select: Pareto front + recommendation; tag the child runs; write outputs
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuner import report
from tuner.hardware import Hardware, detect
from tuner.models import ModelSpec, resolve_weights
from tuner.reference import Reference, prepare_reference
from tuner.select import Limits, feasible_mask, pareto_mask, recommend
from tuner.space import SearchSpace, initial_points, space_function, variant_from_config
from tuner.tracking import Tracker
from tuner.trial import METRICS, OBJECTIVES, TrialSettings, run_trial
from tuner.variant import baseline


def quiet_env() -> None:
    """Environment Ray and MLflow read at import time (DESIGN.md §7), and quieter loggers.
    Call before importing them."""
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for k, v in {
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AIR_NEW_OUTPUT": "0",
        "RAY_DEDUP_LOGS": "0",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }.items():
        os.environ.setdefault(k, v)


@dataclass(frozen=True)
class SearchRequest:
    model: str
    space: SearchSpace
    space_file: Path
    weights: str
    data: str | None
    tracking_uri: str
    experiment: str
    output: Path
    seed: int = 0
    address: str | None = None


@dataclass
class SearchOutcome:
    table: pd.DataFrame
    parent_run_id: str
    output: Path
    recommended: pd.Series | None
    reason: str


def _say(msg: str = "") -> None:
    print(msg, flush=True)


class TrialRecorder:
    """Driver-side record of finished trials: MLflow child run + progress line + trials.csv.

    Created as a Ray Tune `Callback` by `_as_callback`; kept free of Ray types so it can be
    unit-tested with plain dicts.
    """

    def __init__(self, tracker: Tracker, parent_id: str, out: Path, ref: Reference, hw: Hardware, total: int):
        self.tracker, self.parent_id, self.out, self.ref, self.hw, self.total = (
            tracker,
            parent_id,
            out,
            ref,
            hw,
            total,
        )
        self.rows: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.baseline_p50: float | None = None

    def record(self, trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, error: str = "") -> None:
        if trial_id in self.seen:  # at-least-once delivery: never log a trial twice
            return
        self.seen.add(trial_id)
        variant = variant_from_config(config)
        res = dict(result or {})
        if result is None:
            res.update(status="failed", error=error.strip().splitlines()[-1][:500] if error else "trial errored")
            res["traceback"] = error
        index = len(self.rows)
        is_baseline = index == 0 and variant == baseline(variant.threads)
        p50 = res.get("latency_p50_ms")
        if is_baseline and res.get("status") == "ok":
            self.baseline_p50 = p50
        if p50 and self.baseline_p50:
            res["speedup_vs_baseline"] = self.baseline_p50 / p50
        status = str(res.get("status", "failed"))
        tags = {
            "ray.trial_id": trial_id,
            "tuner.status": status,
            "tuner.stable": str(bool(res.get("stable", False))).lower(),
            "tuner.pareto": "false",
            "tuner.recommended": "false",
            "tuner.baseline": str(is_baseline).lower(),
            "tuner.trial_index": str(index),
            "tuner.weights": self.ref.weights_label,
            "tuner.data": self.ref.data_label,
            **self.hw.tags(),
        }
        if res.get("error"):
            tags["tuner.error"] = str(res["error"])[:5000]
        metrics = {k: float(res[k]) for k in METRICS if isinstance(res.get(k), (int, float))}
        run_id = self.tracker.log_child(
            self.parent_id, variant.label, variant.to_dict(), metrics, tags, failed=status == "failed"
        )
        if res.get("traceback"):
            self.tracker.log_text(run_id, str(res["traceback"]), "traceback.txt")
        row = {
            "trial": index,
            "trial_id": trial_id,
            "is_baseline": is_baseline,
            "label": variant.label,
            **variant.to_dict(),
            **{k: res.get(k) for k in METRICS},
            "status": status,
            "stable": bool(res.get("stable", False)),
            "error": res.get("error", ""),
            "mlflow_run_id": run_id,
        }
        self.rows.append(row)
        report.write_tables(self.table(), self.out)
        _say(self.progress_line(row))

    def progress_line(self, row: dict[str, Any]) -> str:
        n = f"[{len(self.rows):>{len(str(self.total))}}/{self.total}]"
        head = f"{n} {row['status']:<10} {row['label']:<38}"
        if row["status"] != "ok":
            return f"{head} {row['error'][:90]}"
        return (
            f"{head} p50 {row['latency_p50_ms']:8.1f} ms  {row['throughput_ips']:8.1f} items/s  "
            f"quality {row['quality']:.3f}  build {row['build_s']:.1f}s" + ("" if row["stable"] else "  (unstable)")
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _as_callback(recorder: TrialRecorder) -> Any:
    from ray.tune import Callback

    class _Cb(Callback):
        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            if trial.last_result and "status" in trial.last_result:
                recorder.record(trial.trial_id, trial.config, trial.last_result)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            err = ""
            if trial.error_file and Path(trial.error_file).exists():
                err = Path(trial.error_file).read_text()
            recorder.record(trial.trial_id, trial.config, None, err or "trial errored")

    return _Cb()


def _cores_per_trial(address: str | None) -> int:
    """All CPUs of the smallest alive node: one measured trial per node at a time, and never
    a request Ray cannot satisfy (Ray hangs silently on those)."""
    import ray

    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(min(cpus))) if cpus else 1


def run_search(req: SearchRequest) -> SearchOutcome:
    quiet_env()
    started = time.time()
    req.output.mkdir(parents=True, exist_ok=True)
    sp = req.space
    tracker = Tracker(req.tracking_uri, req.experiment)  # fails fast on a bad store
    spec = resolve_weights(ModelSpec(req.model, req.weights, req.seed))

    _say(f"tuner: {req.model}  space {req.space_file}  output {req.output}")
    _say("preparing the fp32 eager reference ...")
    ref = prepare_reference(
        spec,
        input_size=sp.eval.input_size,
        n_eval=sp.eval.samples,
        n_calib=sp.eval.calibration_samples,
        data_dir=req.data,
    )
    hw = detect()
    _say(f"  weights: {ref.weights_label}")
    _say(f"  data:    {ref.data_label}")
    _say(f"  machine: {hw.cpu_model}, {hw.cores} cores, gpu {hw.gpu}, torch {hw.torch_version}")

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE `group`
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ray.init(address=req.address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    try:
        cores = _cores_per_trial(req.address)
        choices = sp.feasible_choices(
            cores=cores,
            device=hw.device,
            fp16_native=hw.fp16_native,
            bf16_native=hw.bf16_native,
            source=str(req.space_file),
        )
        settings = {
            "model": req.model,
            "space_file": str(req.space_file),
            "trials": sp.search.trials,
            "time_budget_minutes": sp.search.time_budget_minutes,
            "objective": sp.search.objective,
            "sampler": sp.search.sampler,
            "seed": req.seed,
            **{f"constraint.{k}": v for k, v in sp.constraints.model_dump().items()},
            **{f"eval.{k}": v for k, v in sp.eval.model_dump().items()},
            "cores_per_trial": cores,
            "output": str(req.output),
        }
        parent_tags = {
            "tuner.model": req.model,
            "tuner.weights": ref.weights_label,
            "tuner.data": ref.data_label,
            "tuner.output": str(req.output),
            **hw.tags(),
        }
        parent_id = tracker.start_parent(f"search {req.model}", settings, parent_tags)
        _say(f"  mlflow:  {req.tracking_uri}  experiment '{req.experiment}'  parent run {parent_id}")
        _say(
            f"searching: {sp.search.trials} trials, time budget {sp.search.time_budget_minutes} min, "
            f"one at a time on {cores} core(s)"
        )
        recorder = TrialRecorder(tracker, parent_id, req.output, ref, hw, sp.search.trials)
        sampler = (
            optuna.samplers.NSGAIISampler(seed=req.seed)
            if sp.search.sampler == "nsga2"
            # multivariate + group: TPE's mode for conditional (define-by-run) spaces; about half
            # the budget is random start-up so that every compile mode and precision gets seen.
            else optuna.samplers.TPESampler(
                seed=req.seed,
                n_startup_trials=min(10, max(2, sp.search.trials // 2)),
                multivariate=True,
                group=True,
            )
        )
        searcher = OptunaSearch(
            space=space_function(choices),
            metric=list(OBJECTIVES),
            mode=list(OBJECTIVES.values()),
            points_to_evaluate=initial_points(choices, sp.search.trials),
            sampler=sampler,
            study_name=f"tuner-{req.output.name}",
            storage=optuna.storages.RDBStorage(f"sqlite:///{req.output.resolve() / 'optuna.db'}"),
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial, reference=ref, settings=TrialSettings(sp.timing, sp.eval.screen_min_cosine)
            ),
            {"cpu": cores},
        )
        budget = sp.search.time_budget_minutes
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=sp.search.trials,
                max_concurrent_trials=1,
                reuse_actors=False,
                time_budget_s=budget * 60 if budget else None,
            ),
            run_config=tune.RunConfig(
                name="ray",
                storage_path=str(req.output.resolve()),
                verbose=0,
                callbacks=[_as_callback(recorder)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        try:
            tuner.fit()
        except KeyboardInterrupt:
            tracker.log(parent_id, tags={"tuner.status": "interrupted"})
            tracker.finish(parent_id, "KILLED")
            _say(f"interrupted: {len(recorder.rows)} finished trial(s) kept in {req.output} and MLflow")
            raise
    finally:
        ray.shutdown()

    return finalize(recorder, tracker, parent_id, req, ref, started)


def finalize(
    recorder: TrialRecorder,
    tracker: Tracker,
    parent_id: str,
    req: SearchRequest,
    ref: Reference,
    started: float,
) -> SearchOutcome:
    """Selection, tags on the child runs, output files, parent-run summary."""
    sp = req.space
    df = recorder.table()
    limits = Limits(**sp.constraints.model_dump())
    if df.empty:
        tracker.log(parent_id, tags={"tuner.status": "empty"})
        tracker.finish(parent_id, "FAILED")
        _say("no trial finished (time budget too small?)")
        return SearchOutcome(df, parent_id, req.output, None, "no trial finished")

    df["feasible"] = feasible_mask(df, limits)
    df["pareto"] = pareto_mask(df, df["feasible"])
    rec = recommend(df, sp.search.objective, limits)
    df["recommended"] = df.index == rec.index
    for _, row in df.iterrows():
        if row["pareto"] or row["recommended"]:
            tracker.log(
                row["mlflow_run_id"],
                tags={
                    "tuner.pareto": str(bool(row["pareto"])).lower(),
                    "tuner.recommended": str(bool(row["recommended"])).lower(),
                },
            )
    report.write_tables(df, req.output)

    counts = df["status"].value_counts().to_dict()
    wall = time.time() - started
    summary: dict[str, float] = {"wall_s": wall, "n_trials": float(len(df))}
    summary.update({f"n_{k}": float(v) for k, v in counts.items()})
    ok = df[df["status"].eq("ok")]
    if len(ok):
        summary["best_latency_p50_ms"] = float(ok["latency_p50_ms"].min())
        summary["best_throughput_ips"] = float(ok["throughput_ips"].max())
    recommended = df.loc[rec.index] if rec.index is not None else None
    parent_tags = {
        "tuner.status": "ok" if recommended is not None else "no_result",
        "tuner.recommendation_reason": rec.reason,
    }
    if recommended is not None:
        summary["recommended_latency_p50_ms"] = float(recommended["latency_p50_ms"])
        summary["recommended_throughput_ips"] = float(recommended["throughput_ips"])
        if not pd.isna(recommended.get("speedup_vs_baseline")):
            summary["speedup_vs_baseline"] = float(recommended["speedup_vs_baseline"])
        parent_tags.update(
            {
                "tuner.recommended_run_id": str(recommended["mlflow_run_id"]),
                "tuner.recommended_config": str(recommended["label"]),
            }
        )
        report.write_recommended(
            recommended,
            req.output,
            {
                "model": req.model,
                "weights": ref.spec.weights,
                "weights_label": ref.weights_label,
                "data": ref.data_label,
                "space_file": str(req.space_file),
                "reason": rec.reason,
                "hardware": detect().fingerprint,
                "mlflow": {
                    "tracking_uri": req.tracking_uri,
                    "experiment": req.experiment,
                    "parent_run_id": parent_id,
                    "run_id": str(recommended["mlflow_run_id"]),
                },
            },
        )
    tracker.log(parent_id, metrics=summary, tags=parent_tags)
    tracker.log_artifacts(parent_id, req.output, ["trials.csv", "pareto.csv", "recommended.yaml"])
    tracker.finish(parent_id, "FINISHED" if recommended is not None else "FAILED")

    _print_summary(df, recommended, rec.reason, req, parent_id, wall)
    return SearchOutcome(df, parent_id, req.output, recommended, rec.reason)


def _print_summary(
    df: pd.DataFrame, rec: pd.Series | None, reason: str, req: SearchRequest, parent_id: str, wall: float
) -> None:
    _say()
    _say(
        report.format_table(
            df[df["pareto"]],
            "Pareto front (feasible configs no other config beats on p90 latency, throughput and quality):",
        )
    )
    failed = df[~df["status"].eq("ok")]
    if len(failed):
        _say(f"\n{len(failed)} trial(s) not ok:")
        for reason_text, n in failed.groupby(["status", "error"]).size().items():
            _say(f"  {n} x {reason_text[0]}: {reason_text[1][:120]}")
    _say()
    if rec is None:
        _say(f"no recommendation: {reason}")
    else:
        speed = rec.get("speedup_vs_baseline")
        _say(f"RECOMMENDED: {rec['label']}  ({reason})")
        _say(
            f"  p50 {rec['latency_p50_ms']:.1f} ms, p90 {rec['latency_p90_ms']:.1f} ms, "
            f"{rec['throughput_ips']:.1f} items/s, quality {rec['quality']:.3f} "
            f"(drop {100 * rec['accuracy_drop']:.2f}%)"
            + ("" if pd.isna(speed) else f", {speed:.2f}x the baseline's p50")
        )
    if len(df) < req.space.search.trials:
        _say(f"\nthe time budget stopped the search after {len(df)} of {req.space.search.trials} trials")
    _say(f"\nsearch took {wall / 60:.1f} min; outputs in {req.output}")
    _say(f"MLflow parent run {parent_id}; view with:\n  mlflow ui --backend-store-uri {req.tracking_uri}")
    sys.stdout.flush()
