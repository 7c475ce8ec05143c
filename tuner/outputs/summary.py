"""The words around a finished search: the parent run's markdown description (shown by the
MLflow UI) and the terminal summary. Both are built from the trials table alone, plus the
few facts of the search they name (`SearchFacts`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tuner.core.console import say
from tuner.core.schema import TrialStatus, confirmed
from tuner.decide.confirm import Interval


@dataclass(frozen=True)
class SearchFacts:
    model: str
    weights_label: str
    data_label: str
    objective: str
    max_accuracy_drop: float
    trials_planned: int
    output: Path
    tracking_uri: str


def failures_by_reason(df: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(status, error, count) of the trials that are not ok, most frequent first."""
    not_ok = df[~df["status"].eq(TrialStatus.OK)]
    if not len(not_ok):
        return []
    groups = not_ok.groupby(["status", "error"]).size().sort_values(ascending=False)
    return [(str(status), str(error), int(n)) for (status, error), n in groups.items()]


def failures_tag(df: pd.DataFrame) -> str:
    """e.g. "2 x failed: RuntimeError: ...; 1 x timeout: still running after 120 s ..." """
    return "; ".join(f"{n} x {status}: {error[:150]}" for status, error, n in failures_by_reason(df))


def describe(
    df: pd.DataFrame, rec: pd.Series | None, reason: str, facts: SearchFacts, wall: float, tags: dict[str, str]
) -> str:
    """The parent run's description (MLflow `mlflow.note.content`, shown as markdown)."""
    ok = df[df["status"].eq(TrialStatus.OK)]
    lines = [
        f"## Search of `{facts.model}`: {len(df)} trials, {len(ok)} ok, {wall / 60:.1f} min",
        "",
        f"- **Weights:** {facts.weights_label}",
        f"- **Data:** {facts.data_label}",
        f"- **Objective:** {facts.objective}; at most "
        f"{facts.max_accuracy_drop:.1%} quality drop against the fp32 baseline",
        "",
    ]
    if rec is not None:
        conf = rec.get("confirmed_p50_ms", float("nan"))
        speed = rec.get("confirmed_speedup_vs_baseline", rec.get("speedup_vs_baseline"))
        low, high = rec.get("confirmed_speedup_vs_baseline_low"), rec.get("confirmed_speedup_vs_baseline_high")
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
            if "tuner.model_check" in tags:
                lines.append(f"- {tags['tuner.model_artifact']}; loaded back: {tags['tuner.model_check']}")
        if "tuner.profile_top" in tags:
            lines.append(f"- where its time goes (profile of a few batches, on the recommended trial's run under "
                         f"`profile/`): {tags['tuner.profile_top']}")  # fmt: skip
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
    failures = failures_by_reason(df)
    if failures:
        lines += ["### Trials not ok, by reason", ""]
        lines += [f"- {n} x **{status}**: {error[:200] or '(no message)'}" for status, error, n in failures]
        lines.append("")
    lines += [
        "Artifacts: `pareto.html` (interactive), `pareto.png`, `trials.csv`, `pareto.csv`, `recommended.yaml`"
        + (f"; the model: `{tags['tuner.model_uri']}`" if "tuner.model_uri" in tags else "")
        + ". Filter the child runs with `tags.tuner.pareto = 'true'`.",
    ]
    return "\n".join(lines)


def _fmt_interval(iv: Interval, unit: str) -> str:
    return f"{iv.value:.1f} {unit} [{iv.low:.1f}, {iv.high:.1f}]"


def print_summary(
    df: pd.DataFrame, rec: pd.Series | None, reason: str, facts: SearchFacts, parent_id: str, wall: float
) -> None:
    from tuner.outputs.tables import format_table

    say()
    say(
        format_table(
            df[df["pareto"]].sort_values("latency_p90_ms"),
            "Pareto front (feasible configs no other config beats on p90 latency, throughput and quality):",
        )
    )
    if "confirmed_p50_ms" in df:
        _print_confirmed(df[df["confirmed_p50_ms"].notna()])
    failures = failures_by_reason(df)
    if failures:
        say(f"\n{sum(n for _, _, n in failures)} trial(s) not ok:")
        for status, error, n in failures:
            say(f"  {n} x {status}: {error[:120]}")
    say()
    if rec is None:
        say(f"no recommendation: {reason}")
    else:
        _print_recommended(rec, reason)
    if len(df) < facts.trials_planned:
        say(f"\nthe time budget stopped the search after {len(df)} of {facts.trials_planned} trials")
    say(f"\nsearch took {wall / 60:.1f} min; outputs in {facts.output}")
    say(f"MLflow parent run {parent_id}; view with:\n  mlflow ui --backend-store-uri {facts.tracking_uri}")


def _print_confirmed(conf: pd.DataFrame) -> None:
    say("\nConfirmed (median of fresh-process re-measurements, 95% interval):")
    for _, r in conf.iterrows():
        p50 = Interval(*(r[c] for c in confirmed("p50_ms")))
        thr = Interval(
            *(r[c] for c in confirmed("throughput_ips"))
        )
        stream = r.get("confirmed_stream_ips")  # only where it differs: a runtime that runs calls at once
        streamed = pd.notna(stream) and stream != r["confirmed_throughput_ips"]
        stream_iv = Interval(*(r[c] for c in confirmed("stream_ips"))) if streamed else None
        speed = r.get("confirmed_speedup_vs_baseline")
        ci = (r.get("confirmed_speedup_vs_baseline_low", speed), r.get("confirmed_speedup_vs_baseline_high", speed))
        say(
            f"  {r['label']:<38} p50 {_fmt_interval(p50, 'ms'):<28} {_fmt_interval(thr, 'items/s'):<32}"
            + ("" if pd.isna(speed) else f" {speed:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]")
            + f" (search p50 {r['latency_p50_ms']:.1f} ms)"
            + (f", as a stream {_fmt_interval(stream_iv, 'items/s')}" if stream_iv else "")
        )


def _print_recommended(rec: pd.Series, reason: str) -> None:
    speed = rec.get("speedup_vs_baseline")
    say(f"RECOMMENDED: {rec['label']}  ({reason})")
    if pd.notna(rec.get("confirmed_p50_ms", float("nan"))):
        cs = rec.get("confirmed_speedup_vs_baseline")
        low, high = rec.get("confirmed_speedup_vs_baseline_low", cs), rec.get("confirmed_speedup_vs_baseline_high", cs)
        say(
            f"  confirmed p50 {rec['confirmed_p50_ms']:.1f} ms "
            f"[{rec['confirmed_p50_ms_low']:.1f}, {rec['confirmed_p50_ms_high']:.1f}], "
            f"{rec['confirmed_throughput_ips']:.1f} items/s"
            + ("" if pd.isna(cs) else f", {cs:.2f}x [{low:.2f}, {high:.2f}] the confirmed baseline (paired by round)")
        )
    say(
        f"  p50 {rec['latency_p50_ms']:.1f} ms, p90 {rec['latency_p90_ms']:.1f} ms, "
        f"{rec['throughput_ips']:.1f} items/s, quality {rec['quality']:.3f} "
        f"(drop {100 * rec['accuracy_drop']:.2f}%)"
        + ("" if pd.isna(speed) else f", {speed:.2f}x the baseline's p50")
        + " (search-time figures)"
    )
