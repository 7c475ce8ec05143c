"""After the trials: select -> confirm -> publish.

    finalize
      select        a trial above its ceiling: that ceiling re-measured (recheck_ceiling);
                    feasible rows, Pareto front, recommendation (decide/pareto.py)
      confirm       finalists re-measured interleaved (decide/finalists.py): a Confirmation
      publish       tags on the child runs, tables, recommended.yaml, plots, the registered
                    model (register_pick: deploy/register.py), the parent run's description,
                    metrics and artifacts, the terminal summary
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.config.request import SearchRequest
from tuner.core.console import say
from tuner.core.errors import one_line
from tuner.core.schema import CONFIRMED_COLUMNS, TAGS, TrialStatus, selection_tags
from tuner.decide.finalists import Confirmation, ConfirmFn, confirm_finalists
from tuner.decide.pareto import Recommendation, feasible_mask, pareto_mask, recommend
from tuner.inputs.reference import Reference
from tuner.measure.ceiling import CeilingEntry, Refit, entries_for, keys_over_one, refit_fractions
from tuner.measure.hardware import Hardware, detect
from tuner.outputs import tables
from tuner.outputs.summary import SearchFacts, describe, failures_tag, print_summary
from tuner.tracking.recorder import TrialRecorder, close_parent
from tuner.tracking.store import Tracker


@dataclass
class SearchOutcome:
    table: pd.DataFrame
    parent_run_id: str
    output: Path
    recommended: pd.Series | None
    reason: str
    confirmation: Confirmation | None = None  # None: nothing was confirmed
    serving: Any = None  # search/serving_publish.ServingOutcome of `--scenario server|offline`

    @property
    def serving_met(self) -> bool:
        """No serving stage, or one whose best config met its bound."""
        return self.serving is None or bool(self.serving.met)


@dataclass(frozen=True)
class Finished:
    """A search's ending, as `finalize` hands it from step to step."""

    req: SearchRequest
    ref: Reference
    hw: Hardware  # the hardware class the trials ran on
    tracker: Tracker
    parent_id: str
    started: float


def finalize(
    recorder: TrialRecorder,
    tracker: Tracker,
    parent_id: str,
    req: SearchRequest,
    ref: Reference,
    started: float,
    confirm_fn: ConfirmFn | None = None,
    remeasure: Callable[[list[str]], dict[str, CeilingEntry]] | None = None,
) -> SearchOutcome:
    """select -> confirm -> publish (the module docstring). `remeasure`: the ceiling probes
    again on the trials' hardware class (search/cluster.py)."""
    end = Finished(req, ref, recorder.hw, tracker, parent_id, started)
    df = recorder.table()
    if df.empty:
        tracker.log(parent_id, tags={"tuner.status": "empty"})
        tracker.finish(parent_id, "FAILED")
        say("no trial finished (time budget too small?)")
        return SearchOutcome(df, parent_id, req.output, None, "no trial finished")
    rec = select(df, end, remeasure or (lambda keys: entries_for(recorder.hw, keys, remeasure=True)))
    confirmation = confirm(df, rec, end, confirm_fn)
    return publish(df, confirmation.recommendation if confirmation else rec, confirmation, end)


def select(
    df: pd.DataFrame, end: Finished, remeasure: Callable[[list[str]], dict[str, CeilingEntry]]
) -> Recommendation:
    """The ceiling rechecked where a trial beat it, then the feasible rows, the Pareto front
    and the search-time recommendation (columns of `df`)."""
    sp = end.req.space
    recheck_ceiling(df, end.tracker, end.parent_id, remeasure)
    df["feasible"] = feasible_mask(df, sp.constraints)
    df["pareto"] = pareto_mask(df, df["feasible"])
    return recommend(df, sp.search.objective, sp.constraints)


def confirm(df: pd.DataFrame, rec: Recommendation, end: Finished, confirm_fn: ConfirmFn | None) -> Confirmation | None:
    """The finalists re-measured interleaved (decide/finalists.py), unless there is nothing
    to confirm or the space turns confirmation off."""
    sp = end.req.space
    if confirm_fn is None or rec.index is None or sp.confirm.finalists <= 0:
        return None
    return confirm_finalists(df, rec, sp.confirm, sp.search.objective, confirm_fn, end.req.also_confirm,
                             probe_threads=end.hw.cores, flops_per_item=end.ref.flops_per_item)  # fmt: skip


def publish(df: pd.DataFrame, rec: Recommendation, confirmation: Confirmation | None, end: Finished) -> SearchOutcome:
    """Tags on the child runs, trials.csv and pareto.csv, recommended.yaml, the plots, the
    registered model, and the parent run's description, metrics and artifacts; the summary."""
    req, ref, tracker, parent_id = end.req, end.ref, end.tracker, end.parent_id
    df["recommended"] = df.index == rec.index
    _tag_children(df, tracker)
    tables.write_tables(df, req.output)
    recommended = df.loc[rec.index] if rec.index is not None else None
    parent_tags = {"tuner.recommendation_reason": rec.reason}
    failures = failures_tag(df)
    if failures:
        parent_tags["tuner.failures"] = failures
    if recommended is not None:
        _write_recommended(recommended, rec, req, ref, parent_id, end.hw.fingerprint)
    plots = plots_for(df, req.output, f"{req.model}: {len(df)} trials ({ref.weights_label}; {ref.data_label})")
    if recommended is not None:
        parent_tags.update(register_pick(recommended, end))
    wall = time.time() - end.started
    facts = SearchFacts(req.model, ref.weights_label, ref.data_label, req.space.search.objective,
                        req.space.constraints.max_accuracy_drop, req.space.search.trials, req.output,
                        req.tracking_uri)  # fmt: skip
    parent_tags["mlflow.note.content"] = describe(df, recommended, rec.reason, facts, wall, parent_tags)
    tracker.log_artifacts(parent_id, req.output, [*tables.TABLES, *plots])  # plots only if drawn this time
    metrics = _summary_metrics(df, recommended, wall, confirmation)
    close_parent(tracker, parent_id, recommended, tags=parent_tags, metrics=metrics)
    print_summary(df, recommended, rec.reason, facts, parent_id, wall)
    return SearchOutcome(df, parent_id, req.output, recommended, rec.reason, confirmation)


def register_pick(recommended: pd.Series, end: Finished) -> dict[str, str]:
    """The pick saved in its runtime's form and registered (deploy/register.py); the parent
    run's tags say how it went. recommended.yaml names the registered version."""
    from tuner.deploy.register import register_recommended

    req, hw = end.req, end.hw
    tags: dict[str, str] = {}
    hardware = (
        f"class {req.hardware}: {hw.cpu_model} ({hw.isa}), {hw.cores} cores, gpu {hw.gpu}, fingerprint {hw.fingerprint}"
    )
    here = detect().for_device(req.device)
    if (here.cpu_model, here.isa, here.gpu) != (hw.cpu_model, hw.isa, hw.gpu):
        # The artifact is saved and checked by this driver (deploy/), not on a node of the class.
        built_on = f"{here.cpu_model} ({here.isa}), gpu {here.gpu}"
        tags["tuner.model_built_on"] = built_on
        say(
            f"note: the recommended model is saved and checked on this driver, {built_on}, not on a node of"
            f" class {req.hardware}; a compiled artifact (AOTInductor's .pt2) may need rebuilding there"
        )
    tags.update(register_recommended(recommended, end.ref, end.parent_id, req.model, end.tracker, hardware,
                                     req.hardware or "", req.space.constraints.max_accuracy_drop))  # fmt: skip
    if "tuner.registered_model" in tags:  # what `tuner serve OUTPUT_DIR` serves
        tables.note_registered(req.output, tags["tuner.registered_model"])
    return tags


def recheck_ceiling(
    df: pd.DataFrame, tracker: Tracker, parent_id: str, remeasure: Callable[[list[str]], dict[str, CeilingEntry]]
) -> list[Refit]:
    """A trial faster than its ceiling cannot be: re-measure that ceiling now (the cache is
    updated), and where a trial still beats it, take the best achieved rate. The rows of
    `df`, the child runs' metrics and the parent's `tuner.ceiling_*` tags say so."""
    keys = keys_over_one(df)
    if not keys:
        return []
    say(f"ceiling: a trial ran above the {'/'.join(keys)} ceiling; re-measuring it ...")
    try:
        entries = remeasure(keys)
    except (RuntimeError, OSError) as e:  # a probe torch cannot run here; the best achieved rate still bounds it
        say(f"warning: the ceiling could not be re-measured: {one_line(e)}")
        entries = {}
    refits = refit_fractions(df, keys, entries)
    for r in refits:
        say(_refit_line(r))
        tags = {f"tuner.ceiling_source.{r.key}": r.source, f"tuner.ceiling_gflops.{r.key}": f"{r.gflops:.1f}"}
        tracker.log(parent_id, tags=tags)
        for i in r.rows:
            if df.at[i, "mlflow_run_id"]:
                figures = {"ceiling_fraction": df.at[i, "ceiling_fraction"], "ceiling_gflops": r.gflops}
                tracker.log(str(df.at[i, "mlflow_run_id"]), metrics=figures)
    return refits


def _refit_line(r: Refit) -> str:
    was = f"was {r.was_gflops:.0f} GFLOP/s, a trial reached {r.was_fraction:.0%}"
    probe = "could not be re-measured" if r.remeasured is None else f"re-measured {r.remeasured:.0f} GFLOP/s"
    if r.source.startswith("best achieved"):
        now = f"{probe}, still below a trial: now the {r.source}, {r.gflops:.0f} GFLOP/s"
    else:
        now = f"{probe} ({r.source})"
    return f"ceiling: {r.key} {now} ({was}); ceiling_fraction recomputed for {len(r.rows)} trial(s)"


def _tag_children(df: pd.DataFrame, tracker: Tracker) -> None:
    """Confirmed figures, and the Pareto and recommended flags, on the trials' child runs."""
    confirmed = df[df["confirmed_rounds"].notna()] if "confirmed_rounds" in df else df.iloc[:0]
    for _, row in confirmed[confirmed["mlflow_run_id"].astype(bool)].iterrows():
        metrics = {k: row[k] for k in CONFIRMED_COLUMNS if k in row and pd.notna(row[k])}
        tags = {"tuner.confirmed": "true"}
        for col in ("confirmed_nodes", "confirmed_fingerprints"):
            if row.get(col):
                tags[TAGS[col]] = str(row[col])
        tracker.log(row["mlflow_run_id"], metrics=metrics, tags=tags)
    for _, row in df.iterrows():
        if (row["pareto"] or row["recommended"]) and row["mlflow_run_id"]:
            tracker.log(row["mlflow_run_id"], tags=selection_tags(row))


def _summary_metrics(
    df: pd.DataFrame, recommended: pd.Series | None, wall: float, confirmation: Confirmation | None
) -> dict[str, float]:
    summary: dict[str, float] = {"wall_s": wall, "n_trials": float(len(df))}
    if confirmation is not None:
        summary["confirm_s"] = confirmation.seconds
        for key, p50 in confirmation.probe_p50_ms.items():  # the machine's speed, in the same rounds
            summary[f"probe_p50_ms.{key}"] = p50
    summary.update({f"n_{k}": float(v) for k, v in df["status"].value_counts().to_dict().items()})
    ok = df[df["status"].eq(TrialStatus.OK)]
    if len(ok):
        summary["best_latency_p50_ms"] = float(ok["latency_p50_ms"].min())
        summary["best_throughput_ips"] = float(ok["throughput_ips"].max())
    if recommended is not None:
        summary["recommended_latency_p50_ms"] = float(recommended["latency_p50_ms"])
        summary["recommended_throughput_ips"] = float(recommended["throughput_ips"])
        if pd.notna(recommended.get("speedup_vs_baseline")):
            summary["speedup_vs_baseline"] = float(recommended["speedup_vs_baseline"])
        for col in ("ceiling_fraction", *CONFIRMED_COLUMNS):
            if pd.notna(recommended.get(col, float("nan"))):
                summary[f"recommended_{col}"] = float(recommended[col])
    return summary


def _write_recommended(
    recommended: pd.Series, rec: Recommendation, req: SearchRequest, ref: Reference, parent_id: str, fingerprint: str
) -> None:
    tables.write_recommended(
        recommended,
        req.output,
        {
            "model": req.model,
            "weights": ref.spec.weights,
            "weights_label": ref.weights_label,
            "data": ref.data_label,
            "space_file": str(req.space_file),
            "reason": rec.reason,
            "hardware": fingerprint,
            "hardware_class": req.hardware,
            "device": str(req.device) if req.device else None,  # plain for YAML
            "mlflow": {
                "tracking_uri": req.tracking_uri,
                "experiment": req.experiment,
                "parent_run_id": parent_id,
                "run_id": str(recommended["mlflow_run_id"]),
            },
        },
    )


def plots_for(df: pd.DataFrame, out: Path, title: str) -> list[str]:
    """pareto.html + pareto.png; a plotting failure must not cost the search its results."""
    from tuner.outputs.plots import write_plots

    try:
        return write_plots(df, out, title)
    except (ImportError, OSError, ValueError, RuntimeError) as e:  # a plotting library missing, a write or
        # the data refused (plotly's validators, matplotlib's backends); anything else is our bug
        say(f"warning: the Pareto plots could not be drawn: {one_line(e)}")
        return []
