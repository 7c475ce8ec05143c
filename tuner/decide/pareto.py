"""Pareto front and recommendation (docs/architecture.md §6). Pure pandas/numpy: no Ray, no MLflow.

Input is the trials table (one row per trial, `trials.csv` columns). Only rows with
`status == "ok"` that meet every constraint are *feasible*; the front and the
recommendation are taken among them. The baseline (`is_baseline`) is always a valid
fallback, so a search that produced any ok baseline never ends without an answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tuner.config.space import Constraints
from tuner.core.schema import OBJECTIVES, TrialStatus
from tuner.core.variant import Variant

# The front's axes (figure -> direction) are core.schema.OBJECTIVES: p90 latency, throughput
# as a stream (`stream_ips`) and quality (top-1 with labels, else top-1 agreement with fp32).
RANK_BY = {"latency": ("latency_p90_ms", True), "throughput": ("stream_ips", False)}


def memory_mb(df: pd.DataFrame) -> pd.Series:
    """The memory `max_memory_mb` limits: a GPU trial's peak device memory, else the trial
    process's peak resident memory."""
    rss = df["peak_rss_mb"]
    return df["peak_device_mb"].fillna(rss) if "peak_device_mb" in df.columns else rss


def feasible_mask(df: pd.DataFrame, limits: Constraints) -> pd.Series:
    """ok rows that meet every constraint (latency limit applies to p90; memory: `memory_mb`)."""
    ok = df["status"].eq(TrialStatus.OK)
    ok &= df["accuracy_drop"].le(limits.max_accuracy_drop + 1e-12)
    if limits.max_latency_ms is not None:
        ok &= df["latency_p90_ms"].le(limits.max_latency_ms)
    if limits.max_memory_mb is not None:
        ok &= memory_mb(df).le(limits.max_memory_mb)
    return ok.fillna(False).astype(bool)


def pareto_mask(df: pd.DataFrame, candidates: pd.Series, objectives: dict[str, str] | None = None) -> pd.Series:
    """True for candidate rows no other candidate dominates. A row dominates another if it
    is at least as good in every objective and strictly better in one; equal points
    therefore do not dominate each other and are all kept."""
    objectives = objectives or dict(OBJECTIVES)
    sub = df.loc[candidates, list(objectives)].astype(float)
    # Turn every objective into "smaller is better".
    vals = np.column_stack([sub[c].to_numpy() * (1 if d == "min" else -1) for c, d in objectives.items()])
    n = len(vals)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        no_worse = (vals <= vals[i]).all(axis=1)
        better = (vals < vals[i]).any(axis=1)
        keep[i] = not (no_worse & better).any()
    out = pd.Series(False, index=df.index)
    out.loc[sub.index[keep]] = True
    return out


def variant_of(row: pd.Series) -> Variant:
    """The Variant of a trials-table row (numpy scalars and CSV types normalised)."""
    fields = {k: row[k] for k in Variant.__dataclass_fields__}
    fields["batch_size"], fields["threads"] = int(fields["batch_size"]), int(fields["threads"])
    return Variant.from_dict(fields)


@dataclass(frozen=True)
class Recommendation:
    index: object  # the trials-table index of the recommended row (None if nothing ran ok)
    reason: str


def recommend(df: pd.DataFrame, objective: str, limits: Constraints) -> Recommendation:
    """Best row for the objective among the Pareto front of the feasible rows (so the answer
    is never dominated); exact ties go to the simpler config. Falls back to the baseline
    when no row meets the constraints."""
    if objective not in RANK_BY:
        raise ValueError(f"`objective` must be one of {sorted(RANK_BY)}; got {objective!r}")
    col, ascending = RANK_BY[objective]
    feas = feasible_mask(df, limits)
    feasible = df[pareto_mask(df, feas) & feas]
    if len(feasible):
        key = feasible[col] if ascending else -feasible[col]
        order = sorted(feasible.index, key=lambda i: (key[i], variant_of(feasible.loc[i]).complexity))
        return Recommendation(order[0], f"best {col} among the {int(feas.sum())} config(s) meeting the constraints")
    base = df[df.get("is_baseline", pd.Series(False, index=df.index)).astype(bool) & df["status"].eq(TrialStatus.OK)]
    if len(base):
        return Recommendation(base.index[0], "no config met the constraints; falling back to the baseline")
    return Recommendation(None, "no trial finished ok, not even the baseline")
