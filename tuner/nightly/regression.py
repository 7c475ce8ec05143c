"""The nightly job's judgements, kept free of I/O so they are unit-tested on their own:
is the champion's change a regression (`nightly_verdict`: judged on the normalised figures
of nightly/drift.py and on quality; the absolute figures are shown beside them, `judge`),
and does a new recommendation replace the champion (`decide_champion`)? Figures are dicts:
`p50_ms`, `p50_ms_low`, `p50_ms_high`, `throughput_ips` (+ `_low`/`_high`), `quality`, and
since normalised figures are stored, `speedup`, `ceiling_fraction` (+ `_low`/`_high`),
`baseline_p50_ms`, `probe_p50_ms`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pandas as pd

from tuner.core.schema import TrialStatus, confirmed
from tuner.core.variant import ceiling_key
from tuner.decide.confirm import Confirmed
from tuner.decide.finalists import Confirmation
from tuner.nightly.verdict import FigureCheck, Judgement, NightlyVerdict, Word

if TYPE_CHECKING:
    from tuner.nightly.check import CheckResult


def _half_width(value: float, low: float, high: float) -> float:
    return max(value - low, high - value) / value if value > 0 else 0.0


def judge(accepted: dict[str, float], now: dict[str, float], threshold: float) -> Judgement:
    """Compare the champion's figures now with the ones it was accepted on. Latency up, or
    throughput or quality down, by more than the noise band is a regression; the other way
    an improvement. The band: max(threshold, either interval's relative half-width)."""
    checks: dict[str, FigureCheck] = {}
    for metric, worse_if_higher in (("p50_ms", True), ("throughput_ips", False)):
        old, new = accepted.get(metric), now.get(metric)
        if not old or not new:
            continue
        band = max(
            threshold,
            _half_width(old, accepted.get(f"{metric}_low", old), accepted.get(f"{metric}_high", old)),
            _half_width(new, now.get(f"{metric}_low", new), now.get(f"{metric}_high", new)),
        )
        change = new / old - 1
        worse = change > band if worse_if_higher else change < -band
        better = change < -band if worse_if_higher else change > band
        checks[metric] = FigureCheck(old, new, change, band, "regression" if worse else "improvement" if better
                                     else "same")  # fmt: skip
    if accepted.get("quality") is not None and now.get("quality") is not None:
        old_q, new_q = accepted["quality"], now["quality"]
        change = new_q - old_q
        band = max(accepted.get("max_accuracy_drop", 0.01) * old_q, 1e-9)
        verdict: Word = "regression" if change < -band else "improvement" if change > band else "same"
        checks["quality"] = FigureCheck(old_q, new_q, change, band, verdict)
    return Judgement(checks)


def figures_of(conf: Confirmed | None, row: pd.Series | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if conf is not None:
        p50, thr = conf.p50_ms, conf.throughput_ips
        out.update(p50_ms=p50.value, p50_ms_low=p50.low, p50_ms_high=p50.high,
                   throughput_ips=thr.value, throughput_ips_low=thr.low, throughput_ips_high=thr.high)  # fmt: skip
    if row is not None and pd.notna(row.get("quality")):
        out["quality"] = float(row["quality"])
    return out


def _interval(row: pd.Series, figure: str, name: str) -> dict[str, float]:
    """A confirmed figure's columns (core.schema.confirmed) as `name`, `name_low`, `name_high`."""
    return dict(zip((name, f"{name}_low", f"{name}_high"), (float(row[c]) for c in confirmed(figure)), strict=True))


def confirmed_figures(row: pd.Series) -> dict[str, float]:
    if pd.isna(row.get("confirmed_p50_ms", float("nan"))):
        return {}
    return {**_interval(row, "p50_ms", "p50_ms"), **_interval(row, "throughput_ips", "throughput_ips"),
            "quality": float(row["quality"])}  # fmt: skip


def decide_champion(
    champion: str | None, champ_row: pd.Series | None, new_row: pd.Series | None, objective: str
) -> tuple[bool, str]:
    """(does the new recommendation become the champion?, why). The old champion stays
    unless it no longer meets the constraints in tonight's search, or the new one is
    significantly better: their confirmed intervals (same interleaved rounds) do not overlap."""
    if champion is None:
        return new_row is not None, "first nightly search of this model on this hardware"
    if new_row is None:
        return False, "no recommendation this time"
    if champ_row is None or not bool(champ_row.get("feasible", False)):
        return True, "the old champion no longer meets the constraints"
    if new_row["label"] == champion:
        return False, "the search recommends the champion again"
    a, b = confirmed_figures(new_row), confirmed_figures(champ_row)
    if not (a and b):
        better = False
    elif objective == "latency":
        better = a["p50_ms_high"] < b["p50_ms_low"]
    else:
        better = a["throughput_ips_low"] > b["throughput_ips_high"]
    if better:
        return True, "the new recommendation is significantly better (confirmed intervals do not overlap)"
    return False, "the new recommendation is not significantly better than the champion"


def verdict_line(verdict: NightlyVerdict | Judgement) -> str:
    return "; ".join(
        f"{m} {c.verdict}: {c.accepted:.4g} -> {c.now:.4g} ({c.change:+.1%}, band {c.band:.1%})"
        if m != "quality"
        else f"quality {c.verdict}: {c.accepted:.3f} -> {c.now:.3f}"
        for m, c in verdict.checks.items()
    )


def accepted_figures(row: pd.Series, df: pd.DataFrame, confirmation: Confirmation | None) -> dict[str, float]:
    """What a new champion is accepted on: its confirmed figures, its normalised ones (the
    speedup and the ceiling fraction, paired by round), and the references of that moment
    (the baseline's and the machine probe's p50 in the same confirmation rounds)."""
    figures = confirmed_figures(row) or {
        "p50_ms": float(row["latency_p50_ms"]),
        "throughput_ips": float(row["throughput_ips"]),
        "quality": float(row["quality"]),
    }
    for name, figure in (("speedup", "speedup_vs_baseline"), ("ceiling_fraction", "ceiling_fraction")):
        if pd.notna(row.get(f"confirmed_{figure}", float("nan"))):
            figures.update(_interval(row, figure, name))
    base = df[df["is_baseline"].astype(bool) & df["status"].eq(TrialStatus.OK)]
    if len(base) and pd.notna(base.iloc[0].get("confirmed_p50_ms", float("nan"))):
        figures["baseline_p50_ms"] = float(base.iloc[0]["confirmed_p50_ms"])
    key = ceiling_key(str(row["precision"]), str(row["quantization"]))
    probe = confirmation.probe_p50_ms.get(key) if confirmation else None
    if confirmation and probe:
        figures["probe_p50_ms"] = float(probe)
        figures["probe_threads"] = float(confirmation.probe_threads)  # the check's probe must match it
    return figures


def nightly_verdict(
    accepted: dict[str, float], check: CheckResult, quality_now: float | None, max_drop: float, threshold: float
) -> NightlyVerdict:
    """Tonight's verdict on the champion: a regression when the judged normalised figure
    (check.verdict: the ceiling fraction, else the speedup) or quality got worse beyond its
    band. The other normalised figure and the absolute ones are compared too, and shown, but
    not judged: the speedup leans on the noisy baseline, the absolute figures move with the
    machine."""
    now = {**check.figures, **({"quality": quality_now} if quality_now is not None else {})}
    absolute = dict(judge({**accepted, "max_accuracy_drop": max_drop}, now, threshold).checks)
    quality = absolute.pop("quality", None)
    # judged, and the normalised figure shown beside the judged one (`judged` False); quality
    judged = Judgement({**check.verdict.checks, **({"quality": quality} if quality else {})})
    return NightlyVerdict(
        regression=judged.regression,
        improvement=judged.improvement,
        checks=judged.checks,
        absolute={m: dataclasses.replace(c, judged=False) for m, c in absolute.items()},  # shown beside them
        normalised_stored=check.verdict.stored,
        judged=check.verdict.judged,
        drift=check.drift,
        remeasured=check.remeasured,
        now=check.figures,
    )
