"""One search, top to bottom (docs/architecture.md §1):

    run_search(request)
      _prepare      inputs checked before anything is written to MLflow; the fp32 eager
                    reference (shared with trials through Ray's object store), the
                    hardware and its ceiling
      _open         Ray, the feasible choices for the cores a trial gets, the MLflow parent
                    run (or the resumed one), the recorder
      _trials       Ray Tune + OptunaSearch, one trial at a time (search/tune.py); the
                    recorder writes a child run, a progress line and trials.csv per trial
      finalize      selection, confirmation, outputs, the registered model (search/finalize.py)
      run_serving   `--scenario server|offline`: the serving search over how the finalists
                    are served (search/serving.py); a search interrupted there resumes there

A signal in any phase closes the parent run as interrupted and keeps the state for
`--resume` (`_close_interrupted`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuner.config.request import SEARCH_STATE, SearchRequest, load_state, save_state
from tuner.core.console import say
from tuner.core.errors import TrackingError
from tuner.core.variant import Device, config_key, unavailable_runtimes
from tuner.decide.finalists import ConfirmFn
from tuner.inputs.models import ModelSpec, check_inputs, resolve_weights
from tuner.inputs.reference import Reference, reference_for
from tuner.measure.ceiling import cache_path
from tuner.measure.hardware import Hardware
from tuner.outputs import tables
from tuner.search import cluster
from tuner.search import tune as tune_wiring
from tuner.search.choices import feasible_choices
from tuner.search.cluster import HardwareClass
from tuner.search.confirm_ray import ray_confirm
from tuner.search.finalize import SearchOutcome, finalize
from tuner.search.sampling import initial_points
from tuner.search.serving import SERVING_CSV, run_serving
from tuner.search.stopping import Interrupt, SigtermAsInterrupt, Stopped, catch_sigterm
from tuner.tracking.recorder import TrialRecorder
from tuner.tracking.store import Tracker, check_reachable, store_lock
from tuner.trial.evaluate import TrialSettings
from tuner.trial.process import default_memory_mb, default_timeout_s

# Called with Ray up, before the first trial: the confirmation function, the reference, the
# space's feasible choices and the hardware class (nightly/model.py's regression check).
BeforeSearch = Callable[[ConfirmFn, Reference, dict[str, Any], HardwareClass], None]


def run_search(req: SearchRequest, before_search: BeforeSearch | None = None) -> SearchOutcome:
    """One search. The caller sets the process environment (core/env.py) before this module
    is imported, since importing it imports Ray, which reads it then (cli/search.py and
    nightly/job.py do)."""
    req.output.mkdir(parents=True, exist_ok=True)
    check_inputs(req.model, req.weights, req.data)
    check_reachable(req.tracking_uri)  # seconds, not MLflow's minutes of retries
    with store_lock(req.tracking_uri), SigtermAsInterrupt() as signals:
        began = time.time()
        try:
            return _run_search(req, before_search)
        except KeyboardInterrupt as e:
            _close_interrupted(req, signals.name(e), began)
            raise


def _close_interrupted(req: SearchRequest, name: str, began: float) -> None:
    """Whatever phase a signal stopped (reference, nightly check, trials, confirmation,
    outputs): close the parent run as interrupted and save the state for `--resume`.
    Nothing to do before this search has written its state (an older search's is left alone)."""
    path = req.output / SEARCH_STATE
    if not path.exists() or path.stat().st_mtime < began:
        return
    st = json.loads(path.read_text())
    if st.get("status") != "running" or not st.get("parent_run_id"):
        return
    parent_id = str(st["parent_run_id"])
    hint = f"python -m tuner search {req.model} --resume {req.output}"
    elapsed = float(st["elapsed_s"]) + time.time() - path.stat().st_mtime
    save_state(req, parent_id, "interrupted", elapsed, stage=str(st.get("stage", "model")))
    try:  # the state is saved first: a store that is down must not cost the resume
        tracker = Tracker(req.tracking_uri, req.experiment)
        tracker.log(parent_id, tags={"tuner.status": "interrupted", "tuner.resume_hint": hint})
        tracker.finish(parent_id, "KILLED")
    except TrackingError as e:
        say(f"warning: the parent run could not be marked interrupted: {e}")
    table = req.output / "trials.csv"
    kept = len(tables.read_trials(table)) if table.exists() else 0
    serving = req.output / SERVING_CSV
    if st.get("stage") == "serving" and serving.exists():
        rows = len(serving.read_text().splitlines()) - 1
        say(f"interrupted by {name} in the serving stage: the model search ({kept} trials) and {rows} finished "
            f"serving trial(s) kept in {req.output}")  # fmt: skip
    else:
        say(f"interrupted by {name}: {kept} finished trial(s) kept in {req.output}")
    say(f"resume with: {hint}")


@dataclass
class _Started:
    started: float  # wall-clock start, moved back by the time an interrupted run already spent
    previous: dict[str, Any] | None  # the saved state of the search being resumed
    ref: Reference


@dataclass
class _Prepared(_Started):
    klass: HardwareClass  # where the trials run
    ceiling: dict[str, float]  # GFLOP/s per precision, measured on that class
    ceiling_probes: dict[str, str]  # the probe that measured each

    @property
    def hw(self) -> Hardware:
        return self.klass.hw


def _run_search(req: SearchRequest, before_search: BeforeSearch | None) -> SearchOutcome:
    begun = _prepare(req)
    import ray

    ray.init(address=req.address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    catch_sigterm()  # ray.init replaced it with sys.exit
    try:
        prep = _place(req, begun)
        klass = prep.klass
        req = dataclasses.replace(req, hardware=klass.name, device=klass.device)  # saved: `--resume` keeps them
        choices = feasible_choices(
            req.space,
            cores=klass.cores,
            device=prep.hw.device,
            fp16_native=prep.hw.fp16_native,
            bf16_native=prep.hw.bf16_native,
            source=str(req.space_file),
        )
        for compile_, install in unavailable_runtimes(req.space.dimensions.compile).items():
            print(f"note: `{compile_}` dropped from the space: it is not installed here ({install})")
        tracker, parent_id, recorder = _open(req, prep)
        settings = _trial_settings(req, prep.ceiling, klass)
        confirm = ray_confirm(prep.ref, settings, klass)  # one copy of the reference in Ray's store
        if before_search is not None:
            before_search(confirm, prep.ref, choices, klass)
        if prep.previous is not None and prep.previous.get("stage") == "serving":
            outcome = _model_search_done(req, parent_id)  # interrupted in the serving stage
        else:
            redraws = _trials(req, prep, choices, settings, recorder, parent_id)
            tracker.log(parent_id, metrics={"sampler_redraws": float(redraws)})
            remeasure = functools.partial(cluster.ceiling_on, klass, remeasure=True)
            outcome = finalize(recorder, tracker, parent_id, req, prep.ref, prep.started, confirm, remeasure=remeasure)
        stage = "model"
        if req.space.serving.scenario != "single-stream" and outcome.recommended is not None:
            stage = "serving"
            outcome.serving = run_serving(req, klass, tracker, parent_id, outcome.table, prep.ref, prep.started)
            tracker.log(parent_id, tags={"tuner.status": "finished"})
            tracker.finish(parent_id)  # again: a resumed serving stage reopened it
        save_state(req, parent_id, "finished", time.time() - prep.started, stage=stage)
        return outcome
    finally:
        ray.shutdown()


def _model_search_done(req: SearchRequest, parent_id: str) -> SearchOutcome:
    """The finished model search of a search resumed in its serving stage, from its files."""
    df = tables.read_trials(req.output / "trials.csv")
    picked = df[df["recommended"].astype(bool)]
    say(f"resuming in the serving stage: the model search finished ({len(df)} trials, pick {picked['label'].iloc[0]})")
    return SearchOutcome(df, parent_id, req.output, picked.iloc[0], "resumed")


def _prepare(req: SearchRequest) -> _Started:
    """The reference, before Ray starts; printed as the search's header."""
    started = time.time()
    previous = load_state(req.output) if req.resume else None
    if previous is not None:
        started -= float(previous["elapsed_s"])  # the time budget counts the earlier part too
    spec = resolve_weights(ModelSpec(req.model, req.weights, req.seed))
    say(f"tuner: {req.model}  space {req.space_file}  output {req.output}")
    say("preparing the fp32 eager reference ...")
    ref = reference_for(spec, req.space.eval, req.data)
    say(f"  weights: {ref.weights_label}")
    say(f"  data:    {ref.data_label}")
    return _Started(started, previous, ref)


def _place(req: SearchRequest, begun: _Started) -> _Prepared:
    """The hardware class the trials run on (search/cluster.py) and its ceiling, measured on
    one of its nodes."""
    klass, nodes = cluster.place(req.hardware)
    klass = cluster.choose_device(klass, req.device)
    hw = klass.hw
    say(f"  machine: {hw.cpu_model}, {hw.cores} cores per trial, gpu {hw.gpu}, torch {hw.torch_version}")
    gpu = f" ({hw.gpu}, driver {hw.gpu_driver}, CUDA {hw.cuda_version}, cuDNN {hw.cudnn_version}; one GPU per trial)"
    say(f"  device:  {klass.device}{gpu if klass.device is Device.CUDA else ''}")
    n_classes = len({n.hardware_class for n in nodes})
    say(f"  hardware class {klass.name}: {len(klass.nodes)} of the cluster's {len(nodes)} node(s) with CPUs, "
        f"{n_classes} class(es) ({', '.join(n.name for n in klass.nodes)})")  # fmt: skip
    warning = cluster.niceness_warning(list(klass.nodes))
    if warning:
        say(warning)
    entries = cluster.ceiling_on(klass)
    rates = ", ".join(f"{k} {e.gflops:.0f} GFLOP/s" for k, e in entries.items())
    say(f"  ceiling: {rates} (measured on the class's node; cache {cache_path(hw.fingerprint)} there)")
    ceiling = {k: e.gflops for k, e in entries.items()}
    return _Prepared(
        **vars(begun), klass=klass, ceiling=ceiling, ceiling_probes={k: e.probe for k, e in entries.items()}
    )


def _open(req: SearchRequest, prep: _Prepared) -> tuple[Tracker, str, TrialRecorder]:
    """The MLflow parent run (new, or the resumed search's) and the trial recorder."""
    sp, ref, klass = req.space, prep.ref, prep.klass
    tracker = Tracker(req.tracking_uri, req.experiment)
    params = {
        "model": req.model,
        "space_file": str(req.space_file),
        "trials": sp.search.trials,
        "time_budget_minutes": sp.search.time_budget_minutes,
        "objective": sp.search.objective,
        "sampler": sp.search.sampler,
        "seed": req.seed,
        **{f"constraint.{k}": v for k, v in sp.constraints.model_dump().items()},
        **{f"eval.{k}": v for k, v in sp.eval.model_dump().items()},
        "cores_per_trial": klass.cores,
        "hardware_class": klass.name,
        "device": klass.device,
        "flops_per_item": ref.flops_per_item,
        **{f"ceiling_gflops.{k}": v for k, v in prep.ceiling.items()},
        "output": str(req.output),
    }
    tags = {
        "tuner.model": req.model,
        "tuner.weights": ref.weights_label,
        "tuner.data": ref.data_label,
        "tuner.output": str(req.output),
        **klass.tags(),
        **{f"tuner.ceiling_source.{k}": v for k, v in prep.ceiling_probes.items()},
        **dict(req.tags),
    }
    if prep.previous is not None:
        parent_id = str(prep.previous["parent_run_id"])
        tracker.reopen(parent_id)
    else:
        parent_id = tracker.start_parent(f"search {req.model}", params, tags)
    save_state(req, parent_id, "running", time.time() - prep.started)
    say(f"  mlflow:  {req.tracking_uri}  experiment '{req.experiment}'  parent run {parent_id}")
    recorder = TrialRecorder(tracker, parent_id, req.output, ref, prep.hw, sp.search.trials)
    if prep.previous is not None:
        recorder.load_finished()
        say(f"resuming: {len(recorder.rows)} finished trial(s) kept from {req.output / 'trials.csv'}")
    return tracker, parent_id, recorder


def _trial_settings(req: SearchRequest, ceiling: dict[str, float], klass: HardwareClass) -> TrialSettings:
    sp = req.space
    settings = TrialSettings(
        sp.timing,
        sp.eval.screen_min_cosine,
        ceiling,
        timeout_s=sp.limits.trial_timeout_s or default_timeout_s(sp.search.time_budget_minutes, sp.search.trials),
        memory_mb=sp.limits.trial_memory_mb or default_memory_mb(),
        faults=tuple(sp.inject_faults),
        cores=klass.cores,
        device=klass.device,
    )
    say(
        f"  limits:  {settings.timeout_s:.0f} s and {settings.memory_mb:.0f} MB resident per trial"
        + (f"; {len(sp.inject_faults)} injected fault rule(s) (test-only)" if sp.inject_faults else "")
    )
    return settings


def _trials(
    req: SearchRequest,
    prep: _Prepared,
    choices: dict[str, list[Any]],
    settings: TrialSettings,
    recorder: TrialRecorder,
    parent_id: str,
) -> int:
    """The remaining trials of the budget; returns how many repeated proposals the sampler
    answered from earlier trials. Raises `Stopped` when a signal stopped them."""
    sp = req.space
    remaining = sp.search.trials - len(recorder.rows)
    budget = sp.search.time_budget_minutes
    budget_left_s = budget * 60 - (time.time() - prep.started) if budget else None
    say(
        f"searching: {remaining} of {sp.search.trials} trials, time budget {budget} min"
        + (f" ({budget_left_s / 60:.1f} left)" if prep.previous is not None and budget_left_s is not None else "")
        + f", {len(prep.klass.nodes)} at a time (one per node of {prep.klass.name}), {settings.cores} core(s) each"
    )
    known = recorder.known_keys()
    points = [
        p
        for p in initial_points(choices, sp.search.trials, sp.search.enqueue, sp.search.objective)
        if config_key(p) not in known
    ]
    search_alg = tune_wiring.searcher(choices, points, sp.search.sampler, sp.search.trials, req.seed, req.output)
    for key, objectives in recorder.known_objectives().items():
        search_alg.remember(key, objectives)  # a resumed search never re-measures a config
    interrupt = Interrupt()
    if remaining > 0 and (budget_left_s is None or budget_left_s > 0):
        tune_wiring.fit(prep.ref, settings, prep.klass, search_alg, remaining, budget_left_s, req.output, recorder,
                        interrupt)  # fmt: skip
    if interrupt.signal is not None:
        save_state(req, parent_id, "running", time.time() - prep.started)  # the budget spent so far
        raise Stopped(interrupt.signal)  # run_search closes the parent run
    if search_alg.redraws:
        say(f"sampler: {search_alg.redraws} repeated proposal(s) answered from earlier trials, not re-measured")
    if search_alg.rejected:
        say(f"sampler: {search_alg.rejected} proposal(s) of pairs no runtime can run (e.g. ort + bf16) drawn again")
    return int(search_alg.redraws)
