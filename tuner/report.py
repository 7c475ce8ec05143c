"""Outputs of a search: the terminal tables, trials.csv, pareto.csv, recommended.yaml;
and `python -m tuner report`, which rebuilds the same table from MLflow.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tuner.confirm import CONFIRMED_COLUMNS
from tuner.trial import METRICS
from tuner.variant import Variant

VARIANT_COLUMNS = list(Variant.__dataclass_fields__)
LEAD_COLUMNS = ["trial", "trial_id", "is_baseline", "label"]
TAIL_COLUMNS = [
    *CONFIRMED_COLUMNS,
    "status",
    "stable",
    "interference",
    "remeasured",
    "feasible",
    "pareto",
    "recommended",
    "error",
    "mlflow_run_id",
    "finished_at",
]
SHOWN = {
    "label": "config",
    "status": "status",
    "latency_p50_ms": "p50 ms",
    "latency_p90_ms": "p90 ms",
    "throughput_ips": "items/s",
    "quality": "quality",
    "accuracy_drop": "drop",
    "speedup_vs_baseline": "speedup",
    "ceiling_fraction": "ceiling",
    "build_s": "build s",
}


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """trials.csv column order: identity, variant fields, metrics, status columns."""
    cols = [c for c in LEAD_COLUMNS + VARIANT_COLUMNS + list(METRICS) + TAIL_COLUMNS if c in df.columns]
    return df[cols + [c for c in df.columns if c not in cols and c != "traceback"]]


def write_tables(df: pd.DataFrame, out: Path) -> None:
    ordered(df).to_csv(out / "trials.csv", index=False)
    if "pareto" in df.columns:
        ordered(df[df["pareto"].astype(bool)]).to_csv(out / "pareto.csv", index=False)


def write_recommended(row: pd.Series, out: Path, context: dict[str, Any]) -> Path:
    """recommended.yaml: the variant (readable by `tuner measure --config`) + its figures."""
    figures = {k: _plain(row[k]) for k in METRICS if k in row.index and not _missing(row[k])}
    confirmed = {k: _plain(row[k]) for k in CONFIRMED_COLUMNS if k in row.index and not _missing(row[k])}
    doc = {
        "variant": {k: _plain(row[k]) for k in VARIANT_COLUMNS},
        "label": row["label"],
        "figures": figures,  # search-time measurement
        "confirmed": confirmed,  # finalist re-measurement (fresh processes, interleaved), if any
        "stable": bool(row.get("stable", False)),
        **context,
    }
    path = out / "recommended.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def format_table(df: pd.DataFrame, title: str) -> str:
    cols = [c for c in SHOWN if c in df.columns]
    view = df[cols].rename(columns=SHOWN).copy()
    for c in ("p50 ms", "p90 ms", "build s"):
        if c in view:
            view[c] = view[c].map(lambda v: "" if _missing(v) else f"{v:.1f}")
    if "items/s" in view:
        view["items/s"] = view["items/s"].map(lambda v: "" if _missing(v) else f"{v:.1f}")
    for c in ("quality",):
        if c in view:
            view[c] = view[c].map(lambda v: "" if _missing(v) else f"{v:.3f}")
    if "drop" in view:
        view["drop"] = view["drop"].map(lambda v: "" if _missing(v) else f"{100 * v:.2f}%")
    if "ceiling" in view:
        view["ceiling"] = view["ceiling"].map(lambda v: "" if _missing(v) else f"{100 * v:.0f}%")
    if "speedup" in view:
        view["speedup"] = view["speedup"].map(lambda v: "" if _missing(v) else f"{v:.2f}x")
    return f"{title}\n{view.to_string(index=False)}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars for YAML."""
    return v.item() if hasattr(v, "item") else v


# ---- reading a search back from MLflow (`python -m tuner report`) ---------------------


def table_from_runs(children: list[Any]) -> pd.DataFrame:
    """Child runs -> the trials table (same columns as trials.csv, as far as logged)."""
    rows = []
    for r in children:
        row: dict[str, Any] = dict(r.data.params)
        row.update(r.data.metrics)
        tags = r.data.tags
        row.update(
            {
                "label": tags.get("mlflow.runName", ""),
                "trial_id": tags.get("ray.trial_id", ""),
                "status": tags.get("tuner.status", ""),
                "stable": tags.get("tuner.stable") == "true",
                "pareto": tags.get("tuner.pareto") == "true",
                "recommended": tags.get("tuner.recommended") == "true",
                "is_baseline": tags.get("tuner.baseline") == "true",
                "error": tags.get("tuner.error", ""),
                "mlflow_run_id": r.info.run_id,
                "trial": int(tags.get("tuner.trial_index", -1)),
            }
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("trial").reset_index(drop=True)
        for c in ("batch_size", "threads"):
            if c in df:
                df[c] = df[c].astype(int)
    return ordered(df)


# ---- report --format / --baseline-run-id -----------------------------------------------

COMPARED = ("latency_p50_ms", "latency_p90_ms", "throughput_ips", "quality")


def compare(df: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Per config (label), this search's figures against a baseline search's, with the
    relative change (`*_change`: +0.10 = 10% higher). A config in only one search is kept
    with its other side empty. Only ok trials carry figures."""

    def side(d: pd.DataFrame) -> pd.DataFrame:
        ok = d[d["status"].eq("ok")] if "status" in d else d
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
            view[c] = view[c].map(lambda v, pct=pct: "" if _missing(v) else (f"{100 * v:+.1f}%" if pct else f"{v:.3g}"))
    header = "| " + " | ".join(map(str, view.columns)) + " |"
    rule = "|" + "---|" * len(view.columns)
    body = [
        "| " + " | ".join("" if _missing(v) else str(v) for v in row) + " |" for row in view.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])
