"""Finalist confirmation (DESIGN.md §3): which configs to re-measure, and the confirmed
recommendation from their re-measurements. Pure pandas: the measuring itself is the
`ConfirmFn` the caller passes (search/confirm_ray.py on Ray; a plain loop in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from tuner.config.space import ConfirmSettings
from tuner.core.console import say
from tuner.core.schema import CONFIRMED_COLUMNS
from tuner.core.variant import Variant
from tuner.decide.confirm import Confirmed, choose
from tuner.decide.pareto import RANK_BY, Recommendation, variant_of

# Measures each variant `rounds` times, interleaved, one fresh process per measurement;
# returns, per variant index, the list of `trial.evaluate.time_variant` results.
ConfirmFn = Callable[[list[Variant], int], dict[int, list[dict[str, Any]]]]


def finalists(df: pd.DataFrame, rec: Recommendation, objective: str, n: int) -> list[Any]:
    """The recommendation first, then the next best Pareto rows for the objective, one row
    per distinct config (a config the sampler measured twice is confirmed once)."""
    front = df[df["pareto"]]
    col, ascending = RANK_BY[objective]
    ordered = [rec.index] + list(front.sort_values(col, ascending=ascending).index)
    out: list[Any] = []
    for i in ordered:
        if df.loc[i, "label"] not in {df.loc[j, "label"] for j in out}:
            out.append(i)
    return out[:n]


def confirm_finalists(
    df: pd.DataFrame,
    rec: Recommendation,
    settings: ConfirmSettings,
    objective: str,
    confirm_fn: ConfirmFn,
    also_confirm: Sequence[str] = (),
) -> Recommendation:
    """Re-measure the finalists (and the baseline, and the `also_confirm` labels, e.g. a
    nightly job's champion) interleaved in fresh processes; write the confirmed_* columns
    into `df`; return the confirmed recommendation."""
    picks = finalists(df, rec, objective, settings.finalists)
    base = df.index[df["is_baseline"].astype(bool) & df["status"].eq("ok")]
    extra = [base[0]] if settings.include_baseline and len(base) and base[0] not in picks else []
    for label in also_confirm:
        rows_of = df.index[df["label"].eq(label) & df["status"].eq("ok")]
        if len(rows_of) and rows_of[0] not in picks + extra:
            extra.append(rows_of[0])
    rows = picks + extra
    also = ["the baseline" if len(base) and i == base[0] else str(df.loc[i, "label"]) for i in extra]
    variants = [variant_of(df.loc[i]) for i in rows]
    say(
        f"\nconfirming {len(picks)} finalist(s){''.join(f' and {n}' for n in also)}: "
        f"{settings.rounds} interleaved round(s), a fresh process each ..."
    )
    confirm_start = time.perf_counter()
    results = confirm_fn(variants, settings.rounds)
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
    latency = objective == "latency"
    intervals = {k: (confirmed[i].p50_ms if latency else confirmed[i].throughput_ips) for k, i in enumerate(candidates)}
    complexity = {k: variants[rows.index(i)].complexity for k, i in enumerate(candidates)}
    k, why = choose(intervals, complexity, lower_is_better=latency)
    return Recommendation(candidates[k], f"confirmed over {len(candidates)} finalist(s): {why}")
