"""One search, top to bottom: reference -> Ray Tune + OptunaSearch -> MLflow -> selection -> outputs.

run_search(request)
  1. check every input before anything is written to MLflow: the store answers, the model,
     weights and data load (the fp32 eager reference is computed once, shared with trials via
     Ray's object store), the space fits the cores Ray can give; only then is the experiment
     opened and the parent run created
  3. Ray Tune: OptunaSearch (multi-objective), trial 0 = baseline, one trial at a time,
     all cores of a node per trial. The Tune actor is reused (`reuse_actors=True`); each
     trial runs in a fresh process forked from that actor's forkserver (guard.fresh_process),
     so a trial costs ~50 ms of process start instead of ~3 s of actor start
  4. TrialRecorder (a Tune callback in the driver): one MLflow child run, one progress
     line and a rewritten trials.csv per finished trial, so nothing is lost
  5. select: Pareto front + recommendation; tag the child runs; write outputs
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tuner.confirm_ray import ray_confirm
from tuner.errors import ConfigError
from tuner.finalize import ConfirmFn, SearchOutcome, finalize, say
from tuner.guard import classify, default_memory_mb, default_timeout_s
from tuner.hardware import detect
from tuner.measure.ceiling import cache_path
from tuner.measure.ceiling import for_hardware as ceiling_for
from tuner.models import ModelSpec, check_inputs, resolve_weights
from tuner.recorder import TrialRecorder
from tuner.reference import Reference, reference_for
from tuner.space import SearchSpace, config_key, initial_points, space_function
from tuner.stopping import Interrupt, SigtermAsInterrupt, Stopped, catch_sigterm
from tuner.tracking import Tracker, check_reachable, store_lock
from tuner.trial import OBJECTIVES, PENALTY, TrialSettings, run_trial


def quiet_env() -> None:
    """Environment Ray and MLflow read at import time (DESIGN.md §7), and quieter loggers.
    Call before importing them."""
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune logs every errored trial with Ray's traceback; the recorder reports them better.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    for k, v in {
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AIR_NEW_OUTPUT": "0",
        "RAY_DEDUP_LOGS": "0",
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        "TUNE_DISABLE_SIGINT_HANDLER": "1",  # ours stops the search cleanly (_Interrupt)
        # A store that goes away mid-search costs seconds, not MLflow's minutes of retries.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        # Ray starts workers at nice 15, below its own daemons and the driver; a trial's
        # timing must not queue behind them (read by the raylet that ray.init starts).
        "RAY_worker_niceness": "0",
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
    resume: bool = False  # continue the interrupted search in `output` (see `load_request`)
    # Nightly jobs (nightly.py): extra parent-run tags, configs (labels) the confirmation must
    # include, and a hook that runs with Ray up and the reference ready, before any trial.
    tags: tuple[tuple[str, str], ...] = ()
    also_confirm: tuple[str, ...] = ()
    before_search: Callable[[ConfirmFn, Reference, dict[str, Any]], None] | None = None


STATE = "search.json"  # in the output folder: what `--resume` and `report --sync` need


def save_state(req: SearchRequest, parent_id: str, status: str, elapsed_s: float) -> None:
    """The request, the parent run and how far the search got; rewritten at each stage."""
    (req.output / "space.yaml").write_text(yaml.safe_dump(req.space.model_dump(mode="json"), sort_keys=False))
    state = {
        "model": req.model,
        "space_file": str(req.space_file),
        "weights": req.weights,
        "data": req.data,
        "tracking_uri": req.tracking_uri,
        "experiment": req.experiment,
        "seed": req.seed,
        "address": req.address,
        "parent_run_id": parent_id,
        "status": status,  # running | interrupted | finished
        "elapsed_s": elapsed_s,
    }
    (req.output / STATE).write_text(json.dumps(state, indent=2))


def load_state(output: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((output / STATE).read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {output}: not a search output folder ({output / STATE}: {e})") from None


def load_request(output: Path) -> SearchRequest:
    """The request of the search in `output`, to resume it: every setting as it was."""
    output = output.resolve()
    st = load_state(output)
    return SearchRequest(
        model=st["model"],
        space=SearchSpace.load(output / "space.yaml"),
        space_file=Path(st["space_file"]),
        weights=st["weights"],
        data=st["data"],
        tracking_uri=st["tracking_uri"],
        experiment=st["experiment"],
        output=output,
        seed=st["seed"],
        address=st["address"],
        resume=True,
    )


def _as_callback(recorder: TrialRecorder) -> Any:
    from ray.tune import Callback

    class _Cb(Callback):
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            recorder.start(trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            if trial.last_result and "status" in trial.last_result:
                recorder.record(trial.trial_id, trial.config, trial.last_result)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            # The trial raised, or its process died (crash, or the guard's timeout/oom kill).
            err = ""
            if trial.error_file and Path(trial.error_file).exists():
                err = Path(trial.error_file).read_text()
            recorder.record(trial.trial_id, trial.config, classify(trial.local_path, err or "trial errored"))

    return _Cb()


def _cores_per_trial() -> int:
    """All CPUs of the smallest alive node: one measured trial per node at a time, and never
    a request Ray cannot satisfy (Ray hangs silently on those)."""
    import ray

    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(1, int(min(cpus))) if cpus else 1


def run_search(req: SearchRequest) -> SearchOutcome:
    quiet_env()
    req.output.mkdir(parents=True, exist_ok=True)
    check_inputs(req.model, req.weights, req.data)
    check_reachable(req.tracking_uri)  # seconds, not MLflow's minutes of retries
    with store_lock(req.tracking_uri), SigtermAsInterrupt() as signals:
        began = time.time()
        try:
            return _run_search(req)
        except KeyboardInterrupt as e:
            _close_interrupted(req, signals.name(e), began)
            raise


def _close_interrupted(req: SearchRequest, name: str, began: float) -> None:
    """Whatever phase a signal stopped (reference, nightly check, trials, confirmation,
    outputs): close the parent run as interrupted and save the state for `--resume`.
    Nothing to do before this search has written its state (an older search's is left alone)."""
    path = req.output / STATE
    if not path.exists() or path.stat().st_mtime < began:
        return
    st = json.loads(path.read_text())
    if st.get("status") != "running" or not st.get("parent_run_id"):
        return
    parent_id = str(st["parent_run_id"])
    hint = f"python -m tuner search {req.model} --resume {req.output}"
    tracker = Tracker(req.tracking_uri, req.experiment)
    tracker.log(parent_id, tags={"tuner.status": "interrupted", "tuner.resume_hint": hint})
    tracker.finish(parent_id, "KILLED")
    save_state(req, parent_id, "interrupted", float(st["elapsed_s"]) + time.time() - path.stat().st_mtime)
    table = req.output / "trials.csv"
    kept = len(pd.read_csv(table)) if table.exists() else 0
    say(f"interrupted by {name}: {kept} finished trial(s) kept in {req.output}")
    say(f"resume with: {hint}")


def _run_search(req: SearchRequest) -> SearchOutcome:
    started = time.time()
    sp = req.space
    previous = load_state(req.output) if req.resume else None
    if previous is not None:
        started -= float(previous["elapsed_s"])  # the time budget counts the earlier part too
    spec = resolve_weights(ModelSpec(req.model, req.weights, req.seed))

    say(f"tuner: {req.model}  space {req.space_file}  output {req.output}")
    say("preparing the fp32 eager reference ...")
    ref = reference_for(spec, sp.eval, req.data)
    hw = detect()
    ceiling = ceiling_for(hw)
    say(f"  weights: {ref.weights_label}")
    say(f"  data:    {ref.data_label}")
    say(f"  machine: {hw.cpu_model}, {hw.cores} cores, gpu {hw.gpu}, torch {hw.torch_version}")
    say(
        "  ceiling: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceiling.items())
        + f" (cache {cache_path(hw.fingerprint)})"
    )

    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE `group`
    from ray import tune

    from tuner.searcher import DedupOptunaSearch

    ray.init(address=req.address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    catch_sigterm()  # ray.init replaced it with sys.exit
    try:
        cores = _cores_per_trial()
        choices = sp.feasible_choices(
            cores=cores,
            device=hw.device,
            fp16_native=hw.fp16_native,
            bf16_native=hw.bf16_native,
            source=str(req.space_file),
        )
        tracker = Tracker(req.tracking_uri, req.experiment)
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
            "flops_per_item": ref.flops_per_item,
            **{f"ceiling_gflops.{k}": v for k, v in ceiling.items()},
            "output": str(req.output),
        }
        parent_tags = {
            "tuner.model": req.model,
            "tuner.weights": ref.weights_label,
            "tuner.data": ref.data_label,
            "tuner.output": str(req.output),
            **hw.tags(),
        }
        if previous is not None:
            parent_id = str(previous["parent_run_id"])
            tracker.reopen(parent_id)
        else:
            parent_id = tracker.start_parent(f"search {req.model}", settings, {**parent_tags, **dict(req.tags)})
        save_state(req, parent_id, "running", time.time() - started)
        say(f"  mlflow:  {req.tracking_uri}  experiment '{req.experiment}'  parent run {parent_id}")
        recorder = TrialRecorder(tracker, parent_id, req.output, ref, hw, sp.search.trials)
        if previous is not None:
            recorder.load_finished()
            say(f"resuming: {len(recorder.rows)} finished trial(s) kept from {req.output / 'trials.csv'}")
        remaining = sp.search.trials - len(recorder.rows)
        budget = sp.search.time_budget_minutes
        budget_left_s = budget * 60 - (time.time() - started) if budget else None
        say(
            f"searching: {remaining} of {sp.search.trials} trials, time budget {budget} min"
            + (f" ({budget_left_s / 60:.1f} left)" if previous is not None and budget_left_s is not None else "")
            + f", one at a time on {cores} core(s)"
        )
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
        searcher = DedupOptunaSearch(
            key=config_key,
            space=space_function(choices),
            metric=list(OBJECTIVES),
            mode=list(OBJECTIVES.values()),
            points_to_evaluate=[
                p
                for p in initial_points(choices, sp.search.trials, sp.search.enqueue)
                if config_key(p) not in recorder.known_keys()
            ],
            penalty=PENALTY,
            sampler=sampler,
            study_name=f"tuner-{req.output.name}",
            storage=optuna.storages.RDBStorage(f"sqlite:///{req.output.resolve() / 'optuna.db'}"),
        )
        trial_settings = TrialSettings(
            sp.timing,
            sp.eval.screen_min_cosine,
            ceiling,
            timeout_s=sp.limits.trial_timeout_s or default_timeout_s(sp.search.time_budget_minutes, sp.search.trials),
            memory_mb=sp.limits.trial_memory_mb or default_memory_mb(),
            faults=tuple(sp.inject_faults),
        )
        say(
            f"  limits:  {trial_settings.timeout_s:.0f} s and {trial_settings.memory_mb:.0f} MB resident per trial"
            + (f"; {len(sp.inject_faults)} injected fault rule(s) (test-only)" if sp.inject_faults else "")
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, reference=ref, settings=trial_settings),
            {"cpu": cores},
        )
        confirm = ray_confirm(ref, trial_settings, cores)  # one copy of the reference in Ray's store
        if req.before_search is not None:
            req.before_search(confirm, ref, choices)
        for key, objectives in recorder.known_objectives().items():
            searcher.remember(key, objectives)  # a resumed search never re-measures a config
        interrupt = Interrupt()
        if remaining > 0 and (budget_left_s is None or budget_left_s > 0):
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    num_samples=remaining,
                    max_concurrent_trials=1,
                    reuse_actors=True,  # trials still get a fresh process each (guard.fresh_process)
                    time_budget_s=budget_left_s,
                ),
                run_config=tune.RunConfig(
                    name=f"ray-{int(time.time())}",  # a fresh Tune experiment per (resumed) run
                    storage_path=str(req.output.resolve()),
                    verbose=0,
                    callbacks=[_as_callback(recorder)],
                    stop=interrupt.stopper(),
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            with interrupt:
                tuner.fit()
        if interrupt.signal is not None:
            save_state(req, parent_id, "running", time.time() - started)  # the budget spent so far
            raise Stopped(interrupt.signal)  # run_search closes the parent run
        if searcher.redraws:
            say(f"sampler: {searcher.redraws} repeated proposal(s) answered from earlier trials, not re-measured")
        tracker.log(parent_id, metrics={"sampler_redraws": float(searcher.redraws)})
        outcome = finalize(recorder, tracker, parent_id, req, ref, started, confirm)
        save_state(req, parent_id, "finished", time.time() - started)
        return outcome
    finally:
        ray.shutdown()
