"""`report --baseline-run-id` and `report --format`: one search against another, per
config, and any table as markdown, csv or json."""

from __future__ import annotations

import pandas as pd

from tuner.core.schema import TrialStatus
from tuner.outputs.tables import is_missing

COMPARED = ("latency_p50_ms", "latency_p90_ms", "throughput_ips", "quality")


def compare(df: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Per config (label), this search's figures against a baseline search's, with the
    relative change (`*_change`: +0.10 = 10% higher). A config in only one search is kept
    with its other side empty. Only ok trials carry figures."""

    def side(d: pd.DataFrame) -> pd.DataFrame:
        ok = d[d["status"].eq(TrialStatus.OK)] if "status" in d else d
        cols = [c for c in COMPARED if c in ok]
        return ok.groupby("label")[cols].median()  # a config measured twice: its median

    a, b = side(df), side(base)
    out = a.join(b.add_suffix("_baseline"), how="outer")
    for c in COMPARED:
        if c in a and f"{c}_baseline" in out:
            out[f"{c}_change"] = out[c] / out[f"{c}_baseline"] - 1
    out = out.reset_index()
    out["in"] = [
        "both" if (lbl in a.index and lbl in b.index) else ("this only" if lbl in a.index else "baseline only")
        for lbl in out["label"]
    ]
    return out.sort_values("latency_p90_ms", na_position="last").reset_index(drop=True)


def render(df: pd.DataFrame, fmt: str) -> str:
    """A table as markdown, csv or json (records)."""
    if fmt == "csv":
        return str(df.to_csv(index=False))
    if fmt == "json":
        return str(df.to_json(orient="records", indent=2))
    view = df.copy()
    for c in view.columns:
        if view[c].dtype.kind == "f":
            pct = c.endswith("_change") or c == "accuracy_drop"
            view[c] = view[c].map(
                lambda v, pct=pct: "" if is_missing(v) else (f"{100 * v:+.1f}%" if pct else f"{v:.3g}")
            )
    header = "| " + " | ".join(map(str, view.columns)) + " |"
    rule = "|" + "---|" * len(view.columns)
    body = [
        "| " + " | ".join("" if is_missing(v) else str(v) for v in row) + " |" for row in view.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def comparability(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """What differs between two searches' setups, so that a change is read correctly."""
    keys = {"tuner.model": "model", "tuner.weights": "weights", "tuner.data": "data", "hw.fingerprint": "hardware",
            "hw.torch_version": "torch"}  # fmt: skip
    return [f"{name} differs: {b.get(k, '?')} -> {a.get(k, '?')}" for k, name in keys.items() if a.get(k) != b.get(k)]
