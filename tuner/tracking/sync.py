"""`python -m tuner report --sync DIR`: upload what a search wrote to its output folder while
the MLflow store was unreachable (tracking/store.py `_tolerant`).

Idempotent: a trial already in MLflow (child run tagged with its `ray.trial_id`) is never
logged twice, but what the search's end writes on it (its Pareto and recommended flags, its
confirmed figures) is added when the run lacks it: a trial logged before the store went down
is finished after; run it as often as you like. The output folder is the source of truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuner.config.request import load_state
from tuner.core.console import say
from tuner.core.errors import TrackingError
from tuner.core.schema import CONFIRMED_COLUMNS, FAILED, MLFLOW_METRICS, selection_tags, trial_tags
from tuner.decide.pareto import variant_of
from tuner.outputs import tables
from tuner.tracking.recorder import close_parent
from tuner.tracking.store import Tracker, check_reachable


def sync(output: Path) -> int:
    """Upload the trials missing from MLflow and the parent's outputs; return how many trials."""
    output = output.resolve()
    state = load_state(output)
    check_reachable(state["tracking_uri"])
    tracker = Tracker(state["tracking_uri"], state["experiment"])
    parent_id = str(state["parent_run_id"])
    parent = tracker.run(parent_id)
    inherited = {
        k: v for k, v in parent.data.tags.items() if k.startswith("hw.") or k in ("tuner.weights", "tuner.data")
    }
    df = tables.read_trials(output / "trials.csv")
    logged = {c.data.tags.get("ray.trial_id"): c for c in tracker.children(parent_id)}
    uploaded = 0
    for i, row in df.iterrows():
        trial_id = str(row["trial_id"])
        if trial_id in logged:
            df.at[i, "mlflow_run_id"] = logged[trial_id].info.run_id
            _finish(tracker, logged[trial_id], row)
            continue
        variant = variant_of(row)
        tags = {**inherited, **trial_tags(row), "tuner.synced": "true"}  # logged later, from the output folder
        metrics = {k: float(row[k]) for k in (*MLFLOW_METRICS, *CONFIRMED_COLUMNS) if k in row and pd.notna(row[k])}
        run_id = tracker.log_child(
            parent_id, variant.label, variant.to_dict(), metrics, tags, failed=row["status"] in FAILED
        )
        if tracker.down or not run_id:
            break
        tb = output / "tracebacks" / f"{trial_id}.txt"
        if tb.exists():
            tracker.log_text(run_id, tb.read_text(), "traceback.txt")
        df.at[i, "mlflow_run_id"] = run_id
        uploaded += 1
        say(f"  uploaded trial {row['trial']} ({row['status']}) {variant.label}")
    tables.write_tables(df, output)
    if not tracker.down:
        tracker.log_artifacts(parent_id, output, list(tables.PARENT_ARTIFACTS))
        rec = df[df["recommended"].astype(bool)] if "recommended" in df else df.iloc[:0]
        if state["status"] == "finished":
            close_parent(tracker, parent_id, rec.iloc[0] if len(rec) else None, tags={"tuner.synced": "true"})
    if tracker.down:
        raise TrackingError(
            f"report --sync {output}: the store {state['tracking_uri']} stopped answering; run it again"
        )
    return uploaded


def _finish(tracker: Tracker, child: Any, row: pd.Series) -> None:
    """What the search's end writes on a trial's run (search/finalize.py `_tag_children`) and
    this run lacks: the Pareto and recommended flags, the confirmed figures."""
    have_tags, have_metrics = child.data.tags, child.data.metrics
    tags = {k: v for k, v in selection_tags(row).items() if have_tags.get(k) != v}
    metrics = {k: float(row[k]) for k in CONFIRMED_COLUMNS if k in row and pd.notna(row[k]) and k not in have_metrics}
    if metrics:
        tags["tuner.confirmed"] = "true"
    if tags or metrics:
        tracker.log(child.info.run_id, metrics=metrics, tags=tags)
