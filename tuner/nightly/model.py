"""One model of a nightly job (docs/nightly.md):

run_model
  _History.read     the previous nightly search on this hardware: champion, accepted
                    figures, Pareto front (tracking/history.py)
  _request          a new search request warm-started from that front, or the
                    interrupted one resumed
  before_search     the regression check: the champion re-measured with the
                    confirmation protocol, with Ray up and the reference ready; with a
                    serving scenario, its service too (nightly/served.py)
  run_search        the search itself (search/run.py)
  _judge            regression verdict and champion decision (nightly/regression.py),
                    recorded on the parent run and as the registry alias `champion`
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuner.config.job import Job, ModelJob, RegressionSettings
from tuner.config.request import SEARCH_STATE, SearchRequest, load_request, load_state, normalise_weights
from tuner.config.space import SearchSpace, resolve_space_file
from tuner.core.console import say
from tuner.core.schema import TrialStatus
from tuner.core.variant import Variant
from tuner.decide.pareto import variant_of
from tuner.measure.hardware import detect
from tuner.nightly.check import CheckResult, ServedFn, run_check
from tuner.nightly.regression import accepted_figures, decide_champion, nightly_verdict, verdict_line
from tuner.nightly.report import print_verdict
from tuner.nightly.served import champion_uri, comparable, measure_served, served_figures
from tuner.nightly.verdict import ModelNight
from tuner.tracking.history import champion_alias, previous_front, previous_run, promote
from tuner.tracking.store import Tracker, absolute_uri, check_reachable, default_tracking_uri, registered_name

if TYPE_CHECKING:
    from tuner.search.cluster import HardwareClass
    from tuner.search.finalize import SearchOutcome


def _path(base: Path, p: str) -> str:
    return str((base / p).resolve())


def tracking_uri(job: Job) -> str:
    return absolute_uri(job.tracking_uri or default_tracking_uri())  # absolute, for --resume


@dataclass
class _History:
    """What the previous nightly search of this model on this hardware left."""

    prev: Any | None = None  # its parent run
    champion: Variant | None = None
    accepted: dict[str, float] = field(default_factory=dict)  # the champion's figures when accepted
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # warm start: champion + front

    @classmethod
    def read(cls, tracker: Tracker, warm_start: bool, hardware_class: str | None) -> _History:
        prev = previous_run(tracker, detect().fingerprint, hardware_class)
        if prev is None:
            return cls()
        champion = Variant.from_dict(json.loads(prev.data.tags["tuner.champion_variant"]))
        accepted = {k.removeprefix("champion_"): v for k, v in prev.data.metrics.items() if k.startswith("champion_")}
        enqueue: list[dict[str, Any]] = []
        if warm_start:
            for v in [champion.to_dict(), *previous_front(tracker, prev)]:
                if v not in enqueue:
                    enqueue.append(v)
        return cls(prev, champion, accepted, enqueue)


def run_model(
    job: Job, mj: ModelJob, job_file: Path, out: Path, deadline: float | None, resume: bool
) -> ModelNight:
    """One model's nightly search; returns its part of the report. Inputs named in the job
    file (space, data, weights) are relative to it."""
    uri = tracking_uri(job)
    experiment = f"{job.experiment_prefix}/{mj.model}"
    check_reachable(uri)
    tracker = Tracker(uri, experiment)
    hist = _History.read(tracker, job.regression.warm_start, mj.hardware)
    result = ModelNight(
        mj.model, mj.hardware, experiment, str(out),
        previous_search=hist.prev.info.run_id if hist.prev else None,
        champion_before=hist.champion.label if hist.champion else None,
    )  # fmt: skip

    budget_left = (deadline - time.time()) / 60 if deadline else None
    if budget_left is not None and budget_left < 0.5:
        say(f"\n== {mj.model}: not run, the job's time budget is used up")
        return dataclasses.replace(result, status="not run (job time budget used up)")
    req = _request(mj, job_file, out, uri, experiment, hist, budget_left, resume)
    _say_warm_start(hist)
    result.warm_start_from = hist.prev.info.run_id if hist.prev and hist.enqueue else None
    result.warm_start_configs = len(hist.enqueue)

    from tuner.search.run import run_search

    check: dict[str, Any] = {}
    hook = _regression_hook(req, hist, job.regression, check, mj.hardware)
    outcome = run_search(_with_history(req, hist), before_search=hook)
    champ = _judge(result, req, hist, check.get("result"), outcome, job.regression.threshold)
    _record(tracker, outcome.parent_run_id, mj.model, result, champ, mj.hardware)
    print_verdict(result)
    return result


def _request(
    mj: ModelJob,
    job_file: Path,
    out: Path,
    uri: str,
    experiment: str,
    hist: _History,
    budget_left: float | None,
    resume: bool,
) -> SearchRequest:
    if resume and (out / SEARCH_STATE).exists() and load_state(out)["status"] != "finished":
        say(f"\n== {mj.model}: resuming the interrupted search in {out}")
        return load_request(out)
    base = job_file.parent
    space_file = Path(_path(base, mj.space)) if mj.space else resolve_space_file(mj.model, None)
    space = SearchSpace.load(space_file).with_overrides(f"{job_file}: models[{mj.model}].overrides", **mj.overrides)
    minutes = [m for m in (mj.time_budget_minutes, budget_left, space.search.time_budget_minutes) if m]
    space = space.with_overrides(
        f"{job_file}: models[{mj.model}]",
        search={
            "trials": mj.trials,
            "objective": mj.objective,
            "time_budget_minutes": min(minutes) if minutes else None,
            "enqueue": [*space.search.enqueue, *hist.enqueue],
        },
        constraints=mj.constraints,
        serving={"scenario": mj.scenario, "latency_bound_ms": mj.latency_bound_ms},
    )
    return SearchRequest(
        model=mj.model,
        space=space,
        space_file=space_file.resolve(),
        weights=normalise_weights(mj.weights, base),
        data=_path(base, mj.data) if mj.data else None,
        tracking_uri=uri,
        experiment=experiment,
        output=out,
        seed=mj.seed,
        hardware=mj.hardware,
    )


def _say_warm_start(hist: _History) -> None:
    if hist.prev is None:
        say("warm start: none (no earlier nightly search of this model on this hardware)")
        return
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(hist.prev.info.start_time / 1000))
    say(
        f"warm start: {len(hist.enqueue)} config(s) (the champion and the Pareto front) from search "
        f"{hist.prev.info.run_id} of {when}"
    )


def _regression_hook(
    req: SearchRequest, hist: _History, settings: RegressionSettings, check: dict[str, Any], hardware: str | None
) -> Any:
    """The search's `before_search` hook: the regression check (nightly/check.py) before any
    trial, with Ray up and the reference ready; its result goes into `check["result"]`."""

    def before_search(confirm_fn: Any, ref: Any, choices: dict[str, list[Any]], klass: HardwareClass) -> None:
        champion = hist.champion
        if champion is None:
            return
        rounds = req.space.confirm.rounds
        served = _served_fn(req, klass, hardware)
        service = " and the champion's service" if served else ""
        say(f"regression check: the champion {champion.label}, the fp32 baseline and the machine probe, "
            f"{rounds} interleaved round(s), a fresh process each{service} ...")  # fmt: skip
        threads = max(choices["threads"])  # the search's baseline: all the threads a trial gets
        check["result"] = run_check(confirm_fn, champion, threads, rounds, ref.flops_per_item, hist.accepted,
                                    settings.threshold, settings.drift_warning, served,
                                    settings.served_threshold)  # fmt: skip

    return before_search


def _served_fn(req: SearchRequest, klass: HardwareClass, hardware: str | None) -> ServedFn | None:
    """With a serving scenario: the champion's service measured (nightly/served.py)."""
    s = req.space.serving
    if s.scenario == "single-stream":
        return None
    uri = champion_uri(registered_name(req.model), champion_alias(hardware))
    attempts = 0

    def served(probe_p50_ms: float | None) -> dict[str, float]:
        nonlocal attempts
        attempts += 1
        qps = measure_served(uri, req.tracking_uri, s, klass, req.output / "regression-check" / f"served-{attempts}")
        return {} if qps is None else served_figures(qps, probe_p50_ms, s)

    return served


def _with_history(req: SearchRequest, hist: _History) -> SearchRequest:
    tags: tuple[tuple[str, str], ...] = (("tuner.nightly", "true"),)
    if hist.prev is not None:
        tags += (("tuner.previous_search", hist.prev.info.run_id),)
    also = (hist.champion.label,) if hist.champion else ()
    return dataclasses.replace(req, tags=tags, also_confirm=also)


def _row(df: pd.DataFrame, label: str) -> pd.Series | None:
    rows = df[df["label"].eq(label) & df["status"].eq(TrialStatus.OK)]
    return rows.iloc[0] if len(rows) else None


@dataclass(frozen=True)
class _Champion:
    """Who is champion after this night, with the figures it stands on."""

    variant: dict[str, Any]
    figures: dict[str, float]
    new: bool  # this search's recommendation became champion: move the registry alias


def _judge(
    result: ModelNight,
    req: SearchRequest,
    hist: _History,
    check: CheckResult | None,
    outcome: SearchOutcome,
    threshold: float,
) -> _Champion:
    """The regression verdict on the champion, and who is champion now (both into `result`)."""
    df, new_row = outcome.table, outcome.recommended
    champion = hist.champion
    champ_row = _row(df, champion.label) if champion else None
    quality = float(champ_row["quality"]) if champ_row is not None and pd.notna(champ_row.get("quality")) else None
    verdict = None
    if champion and hist.accepted and check is not None:
        verdict = nightly_verdict(hist.accepted, check, quality, req.space.constraints.max_accuracy_drop, threshold)
    result.regression_check = verdict
    result.regression = bool(verdict and verdict.regression)
    result.improvement = bool(verdict and verdict.improvement)
    result.recommended = str(new_row["label"]) if new_row is not None else None
    result.serving = outcome.serving.reason if outcome.serving is not None else ""

    new_champ, why = decide_champion(
        champion.label if champion else None, champ_row, new_row, req.space.search.objective
    )
    if new_champ and new_row is not None:
        label, variant = str(new_row["label"]), variant_of(new_row).to_dict()
        figures = accepted_figures(new_row, df, outcome.confirmation)
        served = outcome.serving.winner if outcome.serving is not None else None
        if served is not None:  # tonight's served winner: where promote() moves the alias
            figures.update(served_figures(float(served["objective"]), figures.get("probe_p50_ms"), req.space.serving))
    elif champion is not None:
        label, variant, figures = champion.label, champion.to_dict(), dict(hist.accepted)
        if verdict is not None and not verdict.normalised_stored:  # accepted before they were stored:
            figures.update({k: v for k, v in verdict.now.items() if k.startswith(_NORMALISED_KEYS)})
        now = check.figures if check is not None else {}
        if "served_qps" in now and not comparable(hist.accepted, now):  # none stored for this scenario and bound
            figures.update({k: v for k, v in now.items() if k.startswith("served_")})
    else:
        label, variant, figures = "", {}, {}
    result.champion, result.champion_changed, result.champion_reason = (
        label or None, bool(new_champ and champion is not None), why
    )
    result.champion_figures = figures  # what it stands on from now on (the first night's report shows them)
    return _Champion(variant, figures, bool(new_champ))


# The figures a kept champion takes from tonight when it has none of them stored yet.
_NORMALISED_KEYS = ("speedup", "ceiling_fraction", "baseline_p50_ms", "probe_p50_ms")


def _record(
    tracker: Tracker, parent_id: str, model: str, result: ModelNight, champ: _Champion, hardware: str | None
) -> None:
    """The verdict and the champion as parent-run tags and metrics; the registry alias."""
    tags = {
        "tuner.regression": str(result.regression).lower(),
        "tuner.improvement": str(result.improvement).lower(),
        "tuner.warm_start_from": result.warm_start_from or "",
        "tuner.champion_changed": str(result.champion_changed).lower(),
        "tuner.champion_reason": result.champion_reason,
    }
    if result.champion:
        tags.update({"tuner.champion_config": result.champion, "tuner.champion_variant": json.dumps(champ.variant)})
    if result.regression_check:
        tags["tuner.regression_detail"] = verdict_line(result.regression_check)
    drift = result.machine_drift
    metrics = {f"champion_{k}": float(v) for k, v in champ.figures.items() if k != "max_accuracy_drop"}
    if drift:
        tags["tuner.machine_drift"] = drift.text
        metrics.update(machine_drift=drift.machine, baseline_drift=drift.baseline, probe_drift=drift.probe)
    tracker.log(parent_id, metrics=metrics, tags=tags)
    if champ.new:
        promote(tracker, parent_id, model, hardware)
