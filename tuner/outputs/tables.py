"""Outputs of a search: the terminal tables, trials.csv, pareto.csv, recommended.yaml;
and `python -m tuner report`, which rebuilds the same table from MLflow.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import yaml

from tuner.core.schema import (
    COLUMNS,
    CONFIRMED_COLUMNS,
    CONFIRMED_RENAMED,
    METRICS,
    SHOWN,
    VARIANT_COLUMNS,
    row_from_run,
)

# The files of a search's output folder that go on its parent run (`log_artifacts` skips
# a file that was not written).
TABLES = ("trials.csv", "pareto.csv", "recommended.yaml")
PARENT_ARTIFACTS = (*TABLES, "pareto.html", "pareto.png")


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """trials.csv column order: identity, variant fields, metrics, status columns."""
    cols = [c for c in COLUMNS if c in df.columns]
    return df[cols + [c for c in df.columns if c not in cols and c != "traceback"]]


# Read as text, never as numbers: Ray's trial ids are 8 hex digits, and one like
# "66674806" or "12345e67" would otherwise come back as an int or a float.
ID_COLUMNS = ("trial_id", "mlflow_run_id")


def read_trials(source: Path | TextIO) -> pd.DataFrame:
    """trials.csv, pareto.csv or `report --format csv`, read back: ids as strings, "" as missing,
    and the confirmed columns of an earlier tuner under today's names (core.schema). A table
    from before `stream_ips` gets it from `throughput_ips`, the figure it measured (one call
    at a time)."""
    df = pd.read_csv(source, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(ID_COLUMNS, str))
    df = df.rename(columns=CONFIRMED_RENAMED)
    if "stream_ips" not in df.columns and "throughput_ips" in df.columns:
        df.insert(list(df.columns).index("throughput_ips") + 1, "stream_ips", df["throughput_ips"])
    return df


def write_tables(df: pd.DataFrame, out: Path) -> None:
    ordered(df).to_csv(out / "trials.csv", index=False)
    if "pareto" in df.columns:
        ordered(df[df["pareto"].astype(bool)]).to_csv(out / "pareto.csv", index=False)


def write_recommended(row: pd.Series, out: Path, context: dict[str, Any]) -> Path:
    """recommended.yaml: the variant (readable by `tuner measure --config`) + its figures."""
    figures = {k: _plain(row[k]) for k in METRICS if k in row.index and not is_missing(row[k])}
    confirmed = {k: _plain(row[k]) for k in CONFIRMED_COLUMNS if k in row.index and not is_missing(row[k])}
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


def note_registered(out: Path, registered: str) -> None:
    """recommended.yaml gains `registered_model: tuner-<model>/<version>` once the pick is
    registered (`tuner serve OUTPUT_DIR` serves that version)."""
    path = out / "recommended.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["registered_model"] = registered
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def format_table(df: pd.DataFrame, title: str) -> str:
    """The terminal table: the columns of `core.schema.SHOWN`, each in its own format."""
    cols = [c for c in SHOWN if c in df.columns]
    view = pd.DataFrame(
        {SHOWN[c][0]: df[c].map(lambda v, fmt=SHOWN[c][1]: "" if is_missing(v) else fmt.format(v)) for c in cols}
    )
    return f"{title}\n{view.to_string(index=False)}"


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars for YAML and JSON."""
    return v.item() if hasattr(v, "item") else v


# ---- reading a search back from MLflow (`python -m tuner report`) ---------------------


def table_from_runs(children: list[Any]) -> pd.DataFrame:
    """Child runs -> the trials table (same columns as trials.csv, as far as logged)."""
    rows = [row_from_run(r.data.params, r.data.metrics, r.data.tags, r.info.run_id) for r in children]
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values("trial").reset_index(drop=True)
        for c in ("batch_size", "threads"):
            if c in df:
                df[c] = df[c].astype(int)
    return ordered(df)
