"""What a nightly run reports: the verdict per model in the terminal, and the run's
`nightly-report.md` and `nightly-report.json`. Side by side for each model: the figures
judged (normalised by the baseline and the machine probe measured in the same rounds, and
quality), the absolute figures (shown, never judged: they move with the machine), and the
machine's drift."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuner.core.console import say
from tuner.nightly.verdict import ModelNight, NightlyVerdict

SHOWN_FIGURES = (("p50_ms", "p50 ms"), ("throughput_ips", "items/s"), ("speedup", "speedup x"),
                 ("ceiling_fraction", "ceiling fraction"))  # fmt: skip
# With a serving scenario (nightly/served.py): the champion's service, when it has figures.
SERVED_FIGURES = (("served_qps", "served QPS"), ("served_vs_probe", "served vs probe"))


def shown_figures(figures: dict[str, float]) -> tuple[tuple[str, str], ...]:
    return SHOWN_FIGURES + (SERVED_FIGURES if "served_qps" in figures else ())


def _figure(figures: dict[str, float], name: str) -> str:
    v = figures.get(name)
    if v is None:
        return "-"
    low, high = figures.get(f"{name}_low"), figures.get(f"{name}_high")
    return f"{v:.4g} [{low:.4g}, {high:.4g}]" if low is not None and high is not None else f"{v:.4g}"


_JUDGED = {
    "ceiling_fraction": "the ceiling fraction against the machine probe measured in the same rounds",
    "speedup": "the speedup over the baseline measured in the same rounds",
}


def _verdict_word(verdict: NightlyVerdict) -> str:
    return "REGRESSION" if verdict.regression else "improvement" if verdict.improvement else "no change"


def print_verdict(result: ModelNight) -> None:
    say(f"\n== nightly {result.model}:")
    verdict = result.regression_check
    if verdict is None:
        say("  regression check: nothing to compare with (no earlier champion on this hardware)")
    else:
        judged = [j for j in (_JUDGED.get(str(verdict.judged)),) if j]
        if "served_vs_probe" in verdict.checks:
            judged.append("the champion's served QPS against the same probe")
        say(f"  regression check of {result.champion_before}: {_verdict_word(verdict)} "
            f"(judged on {', '.join(judged) + ', and quality' if judged else 'quality only'})")  # fmt: skip
        if not verdict.normalised_stored:
            say("    no normalised figure was stored for this champion (accepted before tuner stored them): "
                "tonight's are stored from now on")  # fmt: skip
        for m, c in verdict.checks.items():
            say(f"    {m:<17} {c.accepted:.4g} -> {c.now:.4g}  {c.change:+.1%} (band {c.band:.1%})  "
                f"{c.verdict}{'' if c.judged else '  (shown, not judged)'}")  # fmt: skip
        for m, c in verdict.absolute.items():
            say(f"    {m:<17} {c.accepted:.4g} -> {c.now:.4g}  {c.change:+.1%}  (absolute: not judged)")
        if verdict.remeasured:
            say("    re-measured once to rule out a slow phase of the host")
        drift = verdict.drift
        if drift:
            say(f"  machine drift: {drift.text} (baseline {drift.baseline:+.1%}, probe {drift.probe:+.1%})")
            if drift.warning:
                say(f"  warning: the machine drifted beyond the job's regression.drift_warning: {drift.text}")
    say(f"  recommended: {result.recommended}")
    how = "changed" if result.champion_changed else "new" if result.champion_before is None else "kept"
    say(f"  champion: {result.champion} ({how}: {result.champion_reason})")
    if result.serving:
        say(f"  serving search: {result.serving}")
    if result.champion_figures:
        say("  champion stands on: " + ", ".join(f"{label} {_figure(result.champion_figures, n)}"
                                                for n, label in shown_figures(result.champion_figures)))  # fmt: skip


def write_report(results: list[ModelNight], run_dir: Path, wall_s: float, budget_min: float | None) -> None:
    doc = {"wall_s": wall_s, "time_budget_minutes": budget_min, "models": [r.to_json() for r in results]}
    (run_dir / "nightly-report.json").write_text(json.dumps(doc, indent=2, default=_json_default))
    budget = f"the job's time budget for its searches: {budget_min:g} min" if budget_min else "no time budget"
    wall = f"{wall_s / 60:.1f} min" if wall_s >= 60 else f"{wall_s:.0f} s"
    lines = [f"# Nightly tuning report ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Wall time {wall}, measured from the run's start to this report ({budget}; the regression checks "
             "and confirmations come on top).", ""]  # fmt: skip
    for r in results:
        lines += _model_section(r)
    (run_dir / "nightly-report.md").write_text("\n".join(lines))
    say(f"\nnightly report: {run_dir / 'nightly-report.md'} and nightly-report.json")


def flag(r: ModelNight) -> str:
    """One word for a model's night: error, not run, REGRESSION, improvement or ok."""
    status = r.status or ""
    if status.startswith("error"):
        return "error"
    if status.startswith("not run"):
        return "not run"
    return "REGRESSION" if r.regression else "improvement" if r.improvement else "ok"


def heading(r: ModelNight) -> str:
    where = f"class `{r.hardware}`" if r.hardware else "this machine's class"
    return f"## `{r.model}` on {where}: {flag(r)}"


def _model_section(r: ModelNight) -> list[str]:
    lines = [heading(r), ""]
    for key, label in (("warm_start_from", "warm start from search"), ("recommended", "recommended"),
                       ("champion_before", "champion before"), ("champion", "champion now"),
                       ("champion_reason", "why"), ("serving", "serving search"), ("status", "status"),
                       ("output", "output")):  # fmt: skip
        value = getattr(r, key)
        if value:
            lines.append(f"- {label}: `{value}`")
    figures = r.champion_figures
    if figures:
        shown = shown_figures(figures)
        lines += ["", "The champion's accepted figures (confirmed, 95% intervals):", "",
                  "| " + " | ".join(label for _, label in shown) + " |", "|---" * len(shown) + "|",
                  "| " + " | ".join(_figure(figures, n) for n, _ in shown) + " |"]  # fmt: skip
    verdict = r.regression_check
    if verdict:
        lines += ["", "| figure | accepted | now | change | threshold | verdict |", "|---|---|---|---|---|---|"]
        for m, c in verdict.checks.items():
            lines.append(f"| {m} | {c.accepted:.4g} | {c.now:.4g} | {c.change:+.1%} | {c.band:.1%} | "
                         f"{c.verdict if c.judged else c.verdict + ' (not judged)'} |")  # fmt: skip
        for m, c in verdict.absolute.items():
            lines.append(f"| {m} (absolute) | {c.accepted:.4g} | {c.now:.4g} | {c.change:+.1%} | | not judged |")
        if not verdict.normalised_stored:
            lines.append("\nNo normalised figure was stored for this champion; tonight's are stored from now on.")
        if verdict.remeasured:
            lines.append("\nThe check looked like a regression and was measured once more, to rule out a slow phase.")
        drift = verdict.drift
        if drift:
            lines.append(f"\n**Machine drift:** {drift.text} (baseline {drift.baseline:+.1%}, "
                         f"probe {drift.probe:+.1%})" + (" - beyond the job's drift_warning" if drift.warning
                                                          else ""))  # fmt: skip
    lines.append("")
    return lines


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)
