"""`python -m tuner nightly JOBFILE.yaml`: unattended tuning with a history (README "Nightly jobs").

For each model of the job, one search (search.py), plus:

1. **History.** The previous nightly search of the same model on the same hardware
   (`hw.fingerprint`) is read from MLflow: its champion (the accepted config, with the
   figures it was accepted on) and its Pareto front.
2. **Regression check, before any trial.** With Ray up and the reference ready (the
   search's `before_search` hook), the champion is re-measured with the confirmation
   protocol (fresh processes, `confirm.rounds` rounds, bootstrap interval) and compared
   with its accepted figures. A change is a regression when it is worse by more than
   max(the job's relative threshold, the relative half-width of either interval).
   Quality is compared on the champion's trial in this search (it is enqueued).
3. **Warm start.** The champion and the previous Pareto configs are enqueued right after
   the baseline (`search.enqueue`), so the sampler starts from the known front.
4. **Champion.** The new recommendation becomes the champion when the old one no longer
   meets the constraints, or when the new one is significantly better (their confirmed
   intervals, measured in the same interleaved rounds, do not overlap); otherwise the old
   champion stays, with the figures it was accepted on (so slow drift still shows).
   Recorded as parent-run tags/metrics, and as the registry alias `champion`.
5. **Reports:** the terminal, `nightly-report.md` / `nightly-report.json` in the run's
   folder, and tags on each parent run (`tuner.regression`, `tuner.warm_start_from`, ...).

Unattended: a machine-wide lock (a second run exits with EXIT_LOCKED), `--resume` after an
interrupt (each model's search resumes from its output folder), the job's total time
budget, and a log file per run (`nightly.log`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuner.confirm import Confirmed
from tuner.errors import ConfigError, TunerError
from tuner.finalize import say
from tuner.regression import confirmed_figures, decide_champion, figures_of, judge, one_line

EXIT_REGRESSION = 3  # a regression was found (cron/CI alert on this)
EXIT_LOCKED = 75  # another nightly run holds the lock (EX_TEMPFAIL: try again later)
STATE = "nightly-state.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelJob(_Strict):
    model: str
    space: str | None = None  # a space file, relative to the job file (default: as for `search`)
    overrides: dict[str, Any] = {}  # space sections to override, e.g. {eval: {input_size: 64}}
    trials: int | None = Field(default=None, ge=1)
    time_budget_minutes: float | None = Field(default=None, gt=0)
    constraints: dict[str, Any] = {}  # e.g. {max_accuracy_drop: 0.01, max_latency_ms: 50}
    objective: Literal["latency", "throughput"] | None = None
    data: str | None = None  # relative to the job file
    weights: str = "auto"
    seed: int = 0


class RegressionSettings(_Strict):
    threshold: float = Field(default=0.10, gt=0)  # relative change that counts, at least
    warm_start: bool = True


class Job(_Strict):
    # Where results go: relative to the working directory, like `search`. Paths to inputs
    # (space files, data, weights) are relative to the job file.
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db
    experiment_prefix: str = "tuner"  # each model logs to <prefix>/<model>, beside `search`'s runs
    output: str = "nightly-results"  # one folder per run inside
    time_budget_minutes: float | None = Field(default=None, gt=0)  # the whole job
    regression: RegressionSettings = RegressionSettings()
    models: list[ModelJob] = Field(min_length=1)


def load_job(path: Path) -> Job:
    from tuner.space import format_errors, read_yaml_mapping

    raw = read_yaml_mapping(path, "job file", ConfigError)
    try:
        return Job.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(path, e, root=Job, what="job file")) from None


def _path(base: Path, p: str) -> str:
    return str((base / p).resolve())


def _tracking_uri(job: Job) -> str:
    from tuner.tracking import default_tracking_uri

    uri = job.tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"  # absolute, for --resume
    return uri


# ---- history --------------------------------------------------------------------------


def previous_run(tracker: Any, fingerprint: str) -> Any | None:
    """The latest finished nightly search of this experiment on this hardware, with a champion."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`tuner.nightly` = 'true' and tags.`hw.fingerprint` = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    return next((r for r in runs if "tuner.champion_variant" in r.data.tags), None)


def previous_front(tracker: Any, run: Any) -> list[dict[str, Any]]:
    """The Pareto configs (variant dicts) of a previous search."""
    children = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and tags.`tuner.pareto` = 'true'",
        max_results=100,
    )
    out = []
    for c in children:
        p = dict(c.data.params)
        out.append({**p, "batch_size": int(p["batch_size"]), "threads": int(p["threads"])})
    return out


# ---- regression and champion ----------------------------------------------------------


# ---- one model --------------------------------------------------------------------------


def run_model(job: Job, mj: ModelJob, base: Path, out: Path, deadline: float | None, resume: bool) -> dict[str, Any]:
    """One model's nightly search; returns its part of the report."""
    from tuner.hardware import detect
    from tuner.search import SearchRequest, load_request, load_state, run_search
    from tuner.space import SearchSpace, resolve_space_file
    from tuner.tracking import Tracker, check_reachable
    from tuner.variant import Variant

    uri = _tracking_uri(job)
    experiment = f"{job.experiment_prefix}/{mj.model}"
    result: dict[str, Any] = {"model": mj.model, "experiment": experiment, "output": str(out)}
    check_reachable(uri)
    tracker = Tracker(uri, experiment)
    hw = detect()
    prev = previous_run(tracker, hw.fingerprint)
    champion = Variant.from_dict(json.loads(prev.data.tags["tuner.champion_variant"])) if prev else None
    accepted: dict[str, float] = {}
    if prev is not None:
        accepted = {k.removeprefix("champion_"): v for k, v in prev.data.metrics.items() if k.startswith("champion_")}
    result["previous_search"] = prev.info.run_id if prev else None
    result["champion_before"] = champion.label if champion else None

    enqueue: list[dict[str, Any]] = []
    if prev is not None and job.regression.warm_start:
        assert champion is not None
        for v in [champion.to_dict(), *previous_front(tracker, prev)]:
            if v not in enqueue:
                enqueue.append(v)
    budget_left = (deadline - time.time()) / 60 if deadline else None
    if budget_left is not None and budget_left < 0.5:
        say(f"\n== {mj.model}: not run, the job's time budget is used up")
        return {**result, "status": "not run (job time budget used up)"}

    if resume and (out / "search.json").exists() and load_state(out)["status"] != "finished":
        req = load_request(out)
        say(f"\n== {mj.model}: resuming the interrupted search in {out}")
    else:
        space_file = Path(_path(base, mj.space)) if mj.space else resolve_space_file(mj.model, None)
        space = SearchSpace.load(space_file).with_overrides(
            f"{base / 'job'}: models[{mj.model}].overrides", **mj.overrides
        )
        minutes = [m for m in (mj.time_budget_minutes, budget_left, space.search.time_budget_minutes) if m]
        space = space.with_overrides(
            f"job file: models[{mj.model}]",
            search={
                "trials": mj.trials,
                "objective": mj.objective,
                "time_budget_minutes": min(minutes) if minutes else None,
                "enqueue": [*space.search.enqueue, *enqueue],
            },  # fmt: skip
            constraints=mj.constraints,
        )
        req = SearchRequest(
            model=mj.model,
            space=space,
            space_file=space_file.resolve(),
            weights=_path(base, mj.weights) if mj.weights not in ("auto", "pretrained", "random") else mj.weights,
            data=_path(base, mj.data) if mj.data else None,
            tracking_uri=uri,
            experiment=experiment,
            output=out,
            seed=mj.seed,
        )
    if prev is not None:
        say(
            f"warm start: {len(enqueue)} config(s) (the champion and the Pareto front) from search "
            f"{prev.info.run_id} of {time.strftime('%Y-%m-%d %H:%M', time.localtime(prev.info.start_time / 1000))}"
        )
    else:
        say("warm start: none (no earlier nightly search of this model on this hardware)")
    result["warm_start_from"] = prev.info.run_id if prev and enqueue else None
    result["warm_start_configs"] = len(enqueue)

    check: dict[str, Any] = {}

    def before_search(confirm_fn: Any, ref: Any, choices: dict[str, list[Any]]) -> None:
        if champion is None:
            return
        rounds = req.space.confirm.rounds
        say(f"regression check: re-measuring the champion {champion.label} ({rounds} fresh process(es)) ...")
        res = confirm_fn([champion], rounds).get(0, [])
        runs = [r["times_s"] for r in res if r.get("times_s")]
        if runs:
            check["now"] = figures_of(Confirmed(tuple(tuple(r) for r in runs), champion.batch_size), None)

    req = _with(req, before_search, champion, prev)
    outcome = run_search(req)
    df = outcome.table
    champ_row = _row(df, champion.label) if champion else None
    now = dict(check.get("now", {}))
    if champ_row is not None and pd.notna(champ_row.get("quality")):
        now["quality"] = float(champ_row["quality"])
    verdict = judge({**accepted, "max_accuracy_drop": req.space.constraints.max_accuracy_drop}, now,
                    job.regression.threshold) if champion and accepted and now else None  # fmt: skip
    result["regression_check"] = verdict
    result["regression"] = bool(verdict and verdict["regression"])
    result["improvement"] = bool(verdict and verdict["improvement"])
    result["recommended"] = outcome.recommended["label"] if outcome.recommended is not None else None

    new_row = outcome.recommended
    new_champ, why = decide_champion(
        champion.label if champion else None, champ_row, new_row, req.space.search.objective
    )
    if new_champ and new_row is not None:
        champ_label, champ_variant = str(new_row["label"]), _variant_of_row(new_row)
        champ_figures = confirmed_figures(new_row) or {
            "p50_ms": float(new_row["latency_p50_ms"]),
            "throughput_ips": float(new_row["throughput_ips"]),
            "quality": float(new_row["quality"]),
        }
    elif champion is not None:
        champ_label, champ_variant, champ_figures = champion.label, champion.to_dict(), accepted
    else:
        champ_label, champ_variant, champ_figures = "", {}, {}
    result.update(champion=champ_label or None, champion_changed=bool(new_champ and champion is not None),
                  champion_reason=why)  # fmt: skip
    tags = {
        "tuner.regression": str(result["regression"]).lower(),
        "tuner.improvement": str(result["improvement"]).lower(),
        "tuner.warm_start_from": result["warm_start_from"] or "",
        "tuner.champion_changed": str(result["champion_changed"]).lower(),
        "tuner.champion_reason": why,
    }
    if champ_label:
        tags.update({"tuner.champion_config": champ_label, "tuner.champion_variant": json.dumps(champ_variant)})
    if verdict:
        tags["tuner.regression_detail"] = one_line(verdict)
    metrics = {f"champion_{k}": float(v) for k, v in champ_figures.items() if k != "max_accuracy_drop"}
    tracker.log(outcome.parent_run_id, metrics=metrics, tags=tags)
    if new_champ:
        _promote(tracker, outcome.parent_run_id, mj.model)
    _print_verdict(result, verdict)
    return result


def _with(req: Any, hook: Any, champion: Any, prev: Any) -> Any:
    import dataclasses

    tags = (("tuner.nightly", "true"),) + ((("tuner.previous_search", prev.info.run_id),) if prev else ())
    return dataclasses.replace(req, before_search=hook, tags=tags, also_confirm=(champion.label,) if champion else ())


def _row(df: pd.DataFrame, label: str) -> pd.Series | None:
    rows = df[df["label"].eq(label) & df["status"].eq("ok")]
    return rows.iloc[0] if len(rows) else None


def _variant_of_row(row: pd.Series) -> dict[str, Any]:
    from tuner.select import variant_of

    return variant_of(row).to_dict()


def _promote(tracker: Any, parent_id: str, model: str) -> None:
    """Move the registry alias `champion` to this search's registered model version."""
    from tuner.export import registered_name

    tag = tracker.client.get_run(parent_id).data.tags.get("tuner.registered_model")
    if not tag:
        return
    name, _, version = tag.rpartition("/")
    if name == registered_name(model):
        tracker.client.set_registered_model_alias(name, "champion", version)
        tracker.log(parent_id, tags={"tuner.champion_model": f"{name}/{version}"})


def _print_verdict(result: dict[str, Any], verdict: dict[str, Any] | None) -> None:
    say(f"\n== nightly {result['model']}:")
    if verdict is None:
        say("  regression check: nothing to compare with (no earlier champion on this hardware)")
    else:
        say(f"  regression check of {result['champion_before']}: " + ("REGRESSION" if verdict["regression"] else
            "improvement" if verdict["improvement"] else "no change beyond the noise"))  # fmt: skip
        for m, c in verdict["checks"].items():
            change = f"{c['change']:+.1%} (band {c['band']:.1%})"
            say(f"    {m:<15} {c['accepted']:.4g} -> {c['now']:.4g}  {change}  {c['verdict']}")
    say(f"  recommended: {result['recommended']}")
    how = "changed" if result["champion_changed"] else "new" if result["champion_before"] is None else "kept"
    say(f"  champion: {result['champion']} ({how}: {result['champion_reason']})")


# ---- the job ----------------------------------------------------------------------------


class _Tee:
    """stdout and the run's log file at once; anything else (encoding, fileno, isatty) is the
    terminal's, for the libraries that ask."""

    def __init__(self, *streams: IO[str]):
        self.streams = streams

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams[0], name)

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def lock_path() -> Path:
    """Machine-wide: two nightly runs must not measure on one machine at the same time."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuner"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / "nightly.lock"


def run_job(path: Path, resume: bool = False) -> int:
    from filelock import FileLock, Timeout

    from tuner.search import quiet_env

    quiet_env()
    path = path.resolve()
    job = load_job(path)
    base = path.parent
    lock = FileLock(str(lock_path()))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"error: another nightly run holds the lock {lock_path()} (one nightly run per machine, so that "
            "their measurements do not disturb each other). Try again when it has finished.",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    try:
        return _run_locked(job, path, base, resume)
    finally:
        lock.release()


def _run_locked(job: Job, path: Path, base: Path, resume: bool) -> int:
    root = Path(job.output).resolve()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = _last_unfinished(root) if resume else None
    if resume and run_dir is None:
        raise ConfigError(f"--resume: no interrupted nightly run under {root}")
    run_dir = run_dir or root / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / STATE
    state: dict[str, Any] = (
        json.loads(state_file.read_text()) if state_file.exists() else {"job": str(path), "started": time.time()}
    )
    state["status"] = "running"
    state_file.write_text(json.dumps(state, indent=2))
    deadline = state["started"] + job.time_budget_minutes * 60 if job.time_budget_minutes else None
    results: list[dict[str, Any]] = []
    with open(run_dir / "nightly.log", "a") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        say(f"nightly: {path} -> {run_dir} (log: {run_dir / 'nightly.log'})")
        try:
            for mj in job.models:
                safe = mj.model.replace(":", "_").replace("/", "_")
                done = run_dir / safe / "nightly-model.json"
                if done.exists():
                    results.append(json.loads(done.read_text()))
                    say(f"\n== {mj.model}: already done in this run")
                    continue
                try:
                    res = run_model(job, mj, base, run_dir / safe, deadline, resume)
                except KeyboardInterrupt:
                    state["status"] = "interrupted"
                    state_file.write_text(json.dumps(state, indent=2))
                    say(f"nightly interrupted; resume with: python -m tuner nightly {path} --resume")
                    raise
                except TunerError as e:
                    res = {"model": mj.model, "status": f"error: {e}"}
                    say(f"\n== {mj.model}: error: {e}")
                (run_dir / safe).mkdir(exist_ok=True)
                done.write_text(json.dumps(res, indent=2, default=str))
                results.append(res)
        finally:
            if results:
                write_report(results, run_dir)
    state["status"] = "finished"
    state_file.write_text(json.dumps(state, indent=2))
    if any(r.get("regression") for r in results):
        return EXIT_REGRESSION
    return 0 if all(r.get("recommended") for r in results) else 1


def _last_unfinished(root: Path) -> Path | None:
    runs = sorted(p for p in root.iterdir() if (p / STATE).exists())
    for p in reversed(runs):
        if json.loads((p / STATE).read_text()).get("status") != "finished":
            return p
    return None


def write_report(results: list[dict[str, Any]], run_dir: Path) -> None:
    (run_dir / "nightly-report.json").write_text(json.dumps({"models": results}, indent=2, default=_plain))
    lines = [f"# Nightly tuning report ({time.strftime('%Y-%m-%d %H:%M')})", ""]
    for r in results:
        flag = "REGRESSION" if r.get("regression") else "improvement" if r.get("improvement") else "ok"
        lines += [f"## `{r['model']}`: {flag}", ""]
        for key, label in (("warm_start_from", "warm start from search"), ("recommended", "recommended"),
                           ("champion_before", "champion before"), ("champion", "champion now"),
                           ("champion_reason", "why"), ("status", "status"), ("output", "output")):  # fmt: skip
            if r.get(key) is not None:
                lines.append(f"- {label}: `{r[key]}`")
        verdict = r.get("regression_check")
        if verdict:
            lines += ["", "| metric | accepted | now | change | noise band | verdict |", "|---|---|---|---|---|---|"]
            for m, c in verdict["checks"].items():
                figures = f"{c['accepted']:.4g} | {c['now']:.4g} | {c['change']:+.1%} | {c['band']:.1%}"
                lines.append(f"| {m} | {figures} | {c['verdict']} |")
        lines.append("")
    (run_dir / "nightly-report.md").write_text("\n".join(lines))
    say(f"\nnightly report: {run_dir / 'nightly-report.md'} and nightly-report.json")


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)
