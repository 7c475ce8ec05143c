"""After the trials: selection, finalist confirmation, tags on the child runs, output files,
the parent run's summary and the terminal report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuner import report
from tuner.confirm import CONFIRMED_COLUMNS, Confirmed, Interval, choose
from tuner.hardware import detect
from tuner.recorder import TrialRecorder, say
from tuner.reference import Reference
from tuner.select import Limits, Recommendation, feasible_mask, pareto_mask, recommend, variant_of
from tuner.tracking import Tracker
from tuner.variant import Variant

if TYPE_CHECKING:
    from tuner.search import SearchRequest

# Measures each variant `rounds` times, interleaved, one fresh process per measurement;
# returns, per variant index, the list of `trial.time_variant` results.
ConfirmFn = Callable[[list[Variant], int], dict[int, list[dict[str, Any]]]]


@dataclass
class SearchOutcome:
    table: pd.DataFrame
    parent_run_id: str
    output: Path
    recommended: pd.Series | None
    reason: str


# The parent run's artifacts (`log_artifacts` skips a file that was not written).
TABLES = ("trials.csv", "pareto.csv", "recommended.yaml")
PARENT_ARTIFACTS = (*TABLES, "pareto.html", "pareto.png")


def finalize(
    recorder: TrialRecorder,
    tracker: Tracker,
    parent_id: str,
    req: SearchRequest,
    ref: Reference,
    started: float,
    confirm_fn: ConfirmFn | None = None,
    export: bool = True,
) -> SearchOutcome:
    """Selection, tags on the child runs, output files and plots, the recommended model
    (logged and registered), parent-run summary and description."""
    sp = req.space
    df = recorder.table()
    limits = Limits(**sp.constraints.model_dump())
    if df.empty:
        tracker.log(parent_id, tags={"tuner.status": "empty"})
        tracker.finish(parent_id, "FAILED")
        say("no trial finished (time budget too small?)")
        return SearchOutcome(df, parent_id, req.output, None, "no trial finished")

    df["feasible"] = feasible_mask(df, limits)
    df["pareto"] = pareto_mask(df, df["feasible"])
    rec = recommend(df, sp.search.objective, limits)
    if confirm_fn is not None and rec.index is not None and sp.confirm.finalists > 0:
        rec = confirm_finalists(df, rec, req, confirm_fn)
    df["recommended"] = df.index == rec.index
    confirmed_rows = df[df["confirmed_rounds"].notna()] if "confirmed_rounds" in df else df.iloc[:0]
    for _, row in confirmed_rows[confirmed_rows["mlflow_run_id"].astype(bool)].iterrows():
        tracker.log(
            row["mlflow_run_id"],
            metrics={k: row[k] for k in CONFIRMED_COLUMNS if k in row and pd.notna(row[k])},
            tags={"tuner.confirmed": "true"},
        )
    for _, row in df.iterrows():
        if (row["pareto"] or row["recommended"]) and row["mlflow_run_id"]:
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
    if "confirm_s" in df.attrs:
        summary["confirm_s"] = df.attrs["confirm_s"]
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
    not_ok = df[~df["status"].eq("ok")]
    if len(not_ok):  # e.g. "2 x failed: RuntimeError: ...; 1 x timeout: still running after 120 s ..."
        groups = not_ok.groupby(["status", "error"]).size().sort_values(ascending=False)
        parent_tags["tuner.failures"] = "; ".join(f"{n} x {st}: {str(err)[:150]}" for (st, err), n in groups.items())
    if recommended is not None:
        summary["recommended_latency_p50_ms"] = float(recommended["latency_p50_ms"])
        summary["recommended_throughput_ips"] = float(recommended["throughput_ips"])
        if not pd.isna(recommended.get("speedup_vs_baseline")):
            summary["speedup_vs_baseline"] = float(recommended["speedup_vs_baseline"])
        for col in ("ceiling_fraction", *CONFIRMED_COLUMNS):
            if pd.notna(recommended.get(col, float("nan"))):
                summary[f"recommended_{col}"] = float(recommended[col])
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
    plots = plots_for(df, req.output, f"{req.model}: {len(df)} trials ({ref.weights_label}; {ref.data_label})")
    if recommended is not None and export:
        parent_tags.update(register_recommended(recommended, ref, req, parent_id, tracker))
    parent_tags["mlflow.note.content"] = describe(df, recommended, rec.reason, req, ref, wall, parent_tags)
    tracker.log(parent_id, metrics=summary, tags=parent_tags)
    tracker.log_artifacts(parent_id, req.output, [*TABLES, *plots])  # plots only if drawn this time
    tracker.finish(parent_id, "FINISHED" if recommended is not None else "FAILED")

    _print_summary(df, recommended, rec.reason, req, parent_id, wall)
    return SearchOutcome(df, parent_id, req.output, recommended, rec.reason)


def plots_for(df: pd.DataFrame, out: Path, title: str) -> list[str]:
    """pareto.html + pareto.png; a plotting failure must not cost the search its results."""
    from tuner.plots import write_plots

    try:
        return write_plots(df, out, title)
    except Exception as e:  # plotly/matplotlib errors of any kind
        say(f"warning: the Pareto plots could not be drawn: {e}")
        return []


def register_recommended(
    rec: pd.Series, ref: Reference, req: SearchRequest, parent_id: str, tracker: Tracker
) -> dict[str, str]:
    """Log the recommended variant as an MLflow model and register it (export.py)."""
    from tuner.export import log_and_register

    if tracker.down:
        return {"tuner.model_export": "skipped: the MLflow store was unreachable"}
    try:
        tags = log_and_register(variant_of(rec), ref, req.tracking_uri, parent_id, req.model)
    except Exception as e:  # a variant TorchScript cannot trace, a registry error, ...
        say(f"warning: the recommended model was not logged: {str(e).splitlines()[0][:300]}")
        return {"tuner.model_export": f"failed: {str(e).splitlines()[0][:300]}"}
    say(f"model:   {tags['tuner.model_uri']} registered as {tags['tuner.registered_model']} (alias candidate)")
    return tags


def describe(
    df: pd.DataFrame,
    rec: pd.Series | None,
    reason: str,
    req: SearchRequest,
    ref: Reference,
    wall: float,
    tags: dict[str, str],
) -> str:
    """The parent run's description (MLflow `mlflow.note.content`, shown as markdown)."""
    ok = df[df["status"].eq("ok")]
    lines = [
        f"## Search of `{req.model}`: {len(df)} trials, {len(ok)} ok, {wall / 60:.1f} min",
        "",
        f"- **Weights:** {ref.weights_label}",
        f"- **Data:** {ref.data_label}",
        f"- **Objective:** {req.space.search.objective}; at most "
        f"{req.space.constraints.max_accuracy_drop:.1%} quality drop against the fp32 baseline",
        "",
    ]
    if rec is not None:
        conf = rec.get("confirmed_p50_ms", float("nan"))
        speed = rec.get("confirmed_speedup_vs_baseline", rec.get("speedup_vs_baseline"))
        low, high = rec.get("confirmed_speedup_ci_low"), rec.get("confirmed_speedup_ci_high")
        speed_ci = f" [{low:.2f}, {high:.2f}]" if low is not None and pd.notna(low) else ""
        lines += [
            f"### Recommended: `{rec['label']}`",
            f"- p50 {rec['latency_p50_ms']:.2f} ms (search), "
            + (f"{conf:.2f} ms confirmed, " if pd.notna(conf) else "")
            + f"{rec['throughput_ips']:.1f} items/s, quality {rec['quality']:.3f}"
            + (f", **{speed:.2f}x**{speed_ci} the baseline's p50" if pd.notna(speed) else ""),
            f"- why: {reason}",
        ]
        if "tuner.registered_model" in tags:
            lines.append(
                f"- model: `{tags['tuner.registered_model']}` (alias `candidate`), {tags['tuner.model_export']}"
            )
        lines.append("")
    else:
        lines += [f"### No recommendation: {reason}", ""]
    best = ok.sort_values("latency_p90_ms").head(5)
    if len(best):
        lines += ["### Best configs by p90 latency", "", "| config | p50 ms | p90 ms | items/s | quality | Pareto |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for _, r in best.iterrows():
            lines.append(
                f"| `{r['label']}` | {r['latency_p50_ms']:.2f} | {r['latency_p90_ms']:.2f} | "
                f"{r['throughput_ips']:.1f} | {r['quality']:.3f} | {'yes' if r.get('pareto') else ''} |"
            )
        lines.append("")
    not_ok = df[~df["status"].eq("ok")]
    if len(not_ok):
        lines += ["### Trials not ok, by reason", ""]
        for (status, error), n in not_ok.groupby(["status", "error"]).size().sort_values(ascending=False).items():
            lines.append(f"- {n} x **{status}**: {str(error)[:200] or '(no message)'}")
        lines.append("")
    lines += [
        "Artifacts: `pareto.html` (interactive), `pareto.png`, `trials.csv`, `pareto.csv`, `recommended.yaml`"
        + (f"; the model: `{tags['tuner.model_uri']}`" if "tuner.model_uri" in tags else "")
        + ". Filter the child runs with `tags.tuner.pareto = 'true'`.",
    ]
    return "\n".join(lines)


def finalists(df: pd.DataFrame, rec: Recommendation, objective: str, n: int) -> list[Any]:
    """The recommendation first, then the next best Pareto rows for the objective, one row
    per distinct config (a config the sampler measured twice is confirmed once)."""
    front = df[df["pareto"]]
    col, ascending = ("latency_p90_ms", True) if objective == "latency" else ("throughput_ips", False)
    ordered = [rec.index] + list(front.sort_values(col, ascending=ascending).index)
    out: list[Any] = []
    for i in ordered:
        if df.loc[i, "label"] not in {df.loc[j, "label"] for j in out}:
            out.append(i)
    return out[:n]


def confirm_finalists(
    df: pd.DataFrame, rec: Recommendation, req: SearchRequest, confirm_fn: ConfirmFn
) -> Recommendation:
    """Re-measure the finalists (and the baseline) interleaved in fresh processes; write the
    confirmed_* columns into `df`; return the confirmed recommendation."""
    sp = req.space
    picks = finalists(df, rec, sp.search.objective, sp.confirm.finalists)
    base = df.index[df["is_baseline"].astype(bool) & df["status"].eq("ok")]
    extra = [base[0]] if sp.confirm.include_baseline and len(base) and base[0] not in picks else []
    for label in req.also_confirm:  # e.g. a nightly job's champion, measured in the same rounds
        rows_of = df.index[df["label"].eq(label) & df["status"].eq("ok")]
        if len(rows_of) and rows_of[0] not in picks + extra:
            extra.append(rows_of[0])
    rows = picks + extra
    also = ["the baseline" if len(base) and i == base[0] else str(df.loc[i, "label"]) for i in extra]
    variants = [variant_of(df.loc[i]) for i in rows]
    say(
        f"\nconfirming {len(picks)} finalist(s){''.join(f' and {n}' for n in also)}: "
        f"{sp.confirm.rounds} interleaved round(s), a fresh process each ..."
    )
    confirm_start = time.perf_counter()
    results = confirm_fn(variants, sp.confirm.rounds)
    df.attrs["confirm_s"] = time.perf_counter() - confirm_start
    for col in CONFIRMED_COLUMNS:
        if col not in df:
            df[col] = float("nan")
    confirmed: dict[Any, Confirmed] = {}
    for k, i in enumerate(rows):
        runs = [r for r in results.get(k, []) if r.get("times_s")]
        if runs:
            confirmed[i] = Confirmed(
                tuple(tuple(r["times_s"]) for r in runs),
                int(df.loc[i, "batch_size"]),
                tuple(int(r.get("round", n)) for n, r in enumerate(runs)),
            )
            for col, v in confirmed[i].columns().items():
                df.loc[i, col] = v
    if len(base) and base[0] in confirmed:
        for i in confirmed:
            speedup = confirmed[i].speedup_over(confirmed[base[0]])
            df.loc[i, "confirmed_speedup_vs_baseline"] = speedup.value
            df.loc[i, "confirmed_speedup_ci_low"] = speedup.low
            df.loc[i, "confirmed_speedup_ci_high"] = speedup.high
    candidates = [i for i in picks if i in confirmed]
    if not candidates:
        return Recommendation(rec.index, rec.reason + "; confirmation failed, search-time figures kept")
    latency = sp.search.objective == "latency"
    intervals = {k: (confirmed[i].p50_ms if latency else confirmed[i].throughput_ips) for k, i in enumerate(candidates)}
    complexity = {k: variants[rows.index(i)].complexity for k, i in enumerate(candidates)}
    k, why = choose(intervals, complexity, lower_is_better=latency)
    return Recommendation(candidates[k], f"confirmed over {len(candidates)} finalist(s): {why}")


def _fmt_interval(iv: Interval, unit: str) -> str:
    return f"{iv.value:.1f} {unit} [{iv.low:.1f}, {iv.high:.1f}]"


def _print_summary(
    df: pd.DataFrame, rec: pd.Series | None, reason: str, req: SearchRequest, parent_id: str, wall: float
) -> None:
    say()
    say(
        report.format_table(
            df[df["pareto"]].sort_values("latency_p90_ms"),
            "Pareto front (feasible configs no other config beats on p90 latency, throughput and quality):",
        )
    )
    if "confirmed_p50_ms" in df:
        conf = df[df["confirmed_p50_ms"].notna()]
        say("\nConfirmed (median of fresh-process re-measurements, 95% interval):")
        for _, r in conf.iterrows():
            p50 = Interval(r["confirmed_p50_ms"], r["confirmed_p50_ci_low_ms"], r["confirmed_p50_ci_high_ms"])
            thr = Interval(
                r["confirmed_throughput_ips"], r["confirmed_throughput_ci_low"], r["confirmed_throughput_ci_high"]
            )
            speed = r.get("confirmed_speedup_vs_baseline")
            ci = (r.get("confirmed_speedup_ci_low", speed), r.get("confirmed_speedup_ci_high", speed))
            say(
                f"  {r['label']:<38} p50 {_fmt_interval(p50, 'ms'):<28} {_fmt_interval(thr, 'items/s'):<32}"
                + ("" if pd.isna(speed) else f" {speed:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]")
                + f" (search p50 {r['latency_p50_ms']:.1f} ms)"
            )
    failed = df[~df["status"].eq("ok")]
    if len(failed):
        say(f"\n{len(failed)} trial(s) not ok:")
        for reason_text, n in failed.groupby(["status", "error"]).size().items():
            say(f"  {n} x {reason_text[0]}: {reason_text[1][:120]}")
    say()
    if rec is None:
        say(f"no recommendation: {reason}")
    else:
        speed = rec.get("speedup_vs_baseline")
        say(f"RECOMMENDED: {rec['label']}  ({reason})")
        if pd.notna(rec.get("confirmed_p50_ms", float("nan"))):
            cs = rec.get("confirmed_speedup_vs_baseline")
            low, high = rec.get("confirmed_speedup_ci_low", cs), rec.get("confirmed_speedup_ci_high", cs)
            cs_ci = f"[{low:.2f}, {high:.2f}]"
            say(
                f"  confirmed p50 {rec['confirmed_p50_ms']:.1f} ms "
                f"[{rec['confirmed_p50_ci_low_ms']:.1f}, {rec['confirmed_p50_ci_high_ms']:.1f}], "
                f"{rec['confirmed_throughput_ips']:.1f} items/s"
                + ("" if pd.isna(cs) else f", {cs:.2f}x {cs_ci} the confirmed baseline (paired by round)")
            )
        say(
            f"  p50 {rec['latency_p50_ms']:.1f} ms, p90 {rec['latency_p90_ms']:.1f} ms, "
            f"{rec['throughput_ips']:.1f} items/s, quality {rec['quality']:.3f} "
            f"(drop {100 * rec['accuracy_drop']:.2f}%)"
            + ("" if pd.isna(speed) else f", {speed:.2f}x the baseline's p50")
            + " (search-time figures)"
        )
    if len(df) < req.space.search.trials:
        say(f"\nthe time budget stopped the search after {len(df)} of {req.space.search.trials} trials")
    say(f"\nsearch took {wall / 60:.1f} min; outputs in {req.output}")
    say(f"MLflow parent run {parent_id}; view with:\n  mlflow ui --backend-store-uri {req.tracking_uri}")
    sys.stdout.flush()
