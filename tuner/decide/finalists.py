"""Finalist confirmation (docs/architecture.md §3): which configs to re-measure, and the confirmed
recommendation from their re-measurements. Pure pandas: the measuring itself is the
`ConfirmFn` the caller passes (search/confirm_ray.py on Ray; a plain loop in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tuner.config.space import ConfirmSettings
from tuner.core.console import say
from tuner.core.schema import CONFIRMED_COLUMNS, TrialStatus
from tuner.core.variant import MachineProbe, Variant, ceiling_key
from tuner.decide.confirm import Confirmed, Interval, choose, interval_columns, lead_over, probe_fraction
from tuner.decide.pareto import RANK_BY, Recommendation, variant_of

# What confirmation measures: a variant, or the machine probe (nightly's regression check).
Measurable = Variant | MachineProbe
# Measures each item `rounds` times, interleaved, one fresh process per measurement;
# returns, per item index, the list of `trial.evaluate.time_variant` / `time_probe` results.
ConfirmFn = Callable[[Sequence[Measurable], int], dict[int, list[dict[str, Any]]]]


@dataclass(frozen=True)
class Confirmation:
    """What a confirmation decided and measured beside the confirmed_* columns it writes into
    the trials table: the confirmed recommendation, how long it took, and the machine probe
    it ran in the same rounds (its p50 per precision key, with its threads: the nightly
    check's reference for the machine's speed)."""

    recommendation: Recommendation
    seconds: float = 0.0
    probe_threads: int = 0
    probe_p50_ms: dict[str, float] = field(default_factory=dict)


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
    probe_threads: int = 0,
    flops_per_item: float = 0.0,
) -> Confirmation:
    """Re-measure the finalists (and the baseline, and the `also_confirm` labels, e.g. a
    nightly job's champion) interleaved in fresh processes; write the confirmed_* columns
    into `df`; return the confirmed recommendation with what else was measured. With
    `probe_threads`, the machine probe of each finalist's precision runs in the same rounds,
    for `confirmed_ceiling_fraction` and `Confirmation.probe_p50_ms`."""
    picks = finalists(df, rec, objective, settings.finalists)
    base, extra, also = _also_measured(df, picks, settings.include_baseline, also_confirm)
    rows = picks + extra
    variants = [variant_of(df.loc[i]) for i in rows]
    keys = sorted({ceiling_key(v.precision.value, v.quantization.value) for v in variants}) if probe_threads else []
    probes = [MachineProbe(k, probe_threads) for k in keys]
    say(
        f"\nconfirming {len(picks)} finalist(s){''.join(f' and {n}' for n in also)}"
        + (f" and {len(probes)} machine probe(s)" if probes else "")
        + f": {settings.rounds} interleaved round(s), a fresh process each ..."
    )
    confirm_start = time.perf_counter()
    results = confirm_fn([*variants, *probes], settings.rounds)
    seconds = time.perf_counter() - confirm_start
    confirmed = _write_confirmed(df, rows, variants, results, base)
    probe_results = {k: results.get(len(variants) + n, []) for n, k in enumerate(keys)}
    p50 = _probe_fractions(df, confirmed, variants, rows, probe_results, flops_per_item)
    candidates = [i for i in picks if i in confirmed]
    if not candidates:
        why = rec.reason + "; confirmation failed, search-time figures kept"
        return Confirmation(Recommendation(rec.index, why), seconds, probe_threads, p50)
    complexity = [variants[rows.index(i)].complexity for i in candidates]
    k, why = _choose_confirmed([confirmed[i] for i in candidates], complexity, objective == "latency")
    why = f"confirmed over {len(candidates)} finalist(s): {why}"
    return Confirmation(Recommendation(candidates[k], why), seconds, probe_threads, p50)


def _also_measured(
    df: pd.DataFrame, picks: list[Any], include_baseline: bool, also_confirm: Sequence[str]
) -> tuple[pd.Index, list[Any], list[str]]:
    """The baseline's rows, the rows measured beside the finalists (the baseline, the
    `also_confirm` labels) and how the progress line names them."""
    base = df.index[df["is_baseline"].astype(bool) & df["status"].eq(TrialStatus.OK)]
    extra = [base[0]] if include_baseline and len(base) and base[0] not in picks else []
    for label in also_confirm:
        rows_of = df.index[df["label"].eq(label) & df["status"].eq(TrialStatus.OK)]
        if len(rows_of) and rows_of[0] not in picks + extra:
            extra.append(rows_of[0])
    also = ["the baseline" if len(base) and i == base[0] else str(df.loc[i, "label"]) for i in extra]
    return base, extra, also


def _write_confirmed(
    df: pd.DataFrame,
    rows: list[Any],
    variants: list[Variant],
    results: dict[int, list[dict[str, Any]]],
    base: pd.Index,
) -> dict[Any, Confirmed]:
    """The confirmed_* columns of the rows measured, where they ran, and the speedup over the
    baseline paired by round; returns the rows' confirmed runs (a failed one left out)."""
    for col in CONFIRMED_COLUMNS:
        if col not in df:
            df[col] = float("nan")
    confirmed = {
        i: c for i, c in zip(rows, confirmed_runs(results, [v.batch_size for v in variants]), strict=True) if c
    }
    for i, c in confirmed.items():
        for col, v in c.columns().items():
            df.loc[i, col] = v
    for col, key in (("confirmed_nodes", "node"), ("confirmed_fingerprints", "node_fingerprint")):
        # where its measurements ran (search/cluster.py names the nodes), and on what hardware
        df[col] = df[col].fillna("").astype(str) if col in df else ""
        for k, i in enumerate(rows):
            df.loc[i, col] = ",".join(sorted({str(r[key]) for r in results.get(k, []) if r.get(key)}))
    if len(base) and base[0] in confirmed:
        for i in confirmed:
            _put(df, i, "speedup_vs_baseline", confirmed[i].speedup_over(confirmed[base[0]]))
    return confirmed


def _choose_confirmed(runs: list[Confirmed], complexity: Sequence[tuple[int, ...]], latency: bool) -> tuple[int, str]:
    """The best of the confirmed candidates on the objective's interval (decide.confirm.choose),
    leads paired by round where both have a round."""
    intervals = {k: (r.p50_ms if latency else r.stream_ips) for k, r in enumerate(runs)}

    def lead(best: int, k: int) -> Interval | None:
        try:
            return lead_over(runs[best], runs[k], lower_is_better=latency)
        except ValueError:
            return None

    return choose(intervals, dict(enumerate(complexity)), lower_is_better=latency, lead=lead)


def confirmed_runs(results: dict[int, list[dict[str, Any]]], batch_sizes: list[int]) -> list[Confirmed | None]:
    """Per measured item, its per-call times (and stream windows) by round (None: every
    measurement failed)."""
    out: list[Confirmed | None] = []
    for k, batch in enumerate(batch_sizes):
        runs = [r for r in results.get(k, []) if r.get("times_s")]
        rounds = tuple(int(r.get("round", n)) for n, r in enumerate(runs))
        stream = tuple(tuple(r["stream_rates"]) for r in runs) if all(r.get("stream_rates") for r in runs) else ()
        out.append(Confirmed(tuple(tuple(r["times_s"]) for r in runs), batch, rounds, stream) if runs else None)
    return out


def _put(df: pd.DataFrame, i: Any, figure: str, iv: Interval) -> None:
    for col, v in interval_columns(figure, iv).items():
        df.loc[i, col] = v


def _probe_fractions(
    df: pd.DataFrame,
    confirmed: dict[Any, Confirmed],
    variants: list[Variant],
    rows: list[Any],
    probe_results: dict[str, list[dict[str, Any]]],
    flops_per_item: float,
) -> dict[str, float]:
    """confirmed_ceiling_fraction of each confirmed row, against its precision's probe;
    returns each probe's confirmed p50 (ms) by precision key."""
    p50: dict[str, float] = {}
    for key, runs in probe_results.items():
        (probe,) = confirmed_runs({0: runs}, [1])
        if probe is None or not flops_per_item:
            continue
        p50[key] = probe.p50_ms.value
        flops = float(next(r["probe_flops"] for r in runs if r.get("probe_flops")))
        for i, v in zip(rows, variants, strict=True):
            if i in confirmed and ceiling_key(v.precision.value, v.quantization.value) == key:
                fraction = probe_fraction(confirmed[i], probe, flops_per_item, flops)
                _put(df, i, "ceiling_fraction", fraction)
    return p50
