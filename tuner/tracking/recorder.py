"""Driver-side record of finished trials: one MLflow child run, one progress line and a
rewritten trials.csv per trial, so nothing measured is lost if the search stops early.

Kept free of Ray types (the Tune callback in `search/tune.py` forwards to it), so tests
drive it with `TrialResult`s directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuner.core.console import say
from tuner.core.schema import (
    FAILED,
    METRICS,
    MLFLOW_METRICS,
    PENALTY,
    SELECTION_COLUMNS,
    TrialResult,
    TrialStatus,
    objectives_of,
    trial_tags,
)
from tuner.core.variant import baseline, variant_from_config
from tuner.outputs import tables
from tuner.tracking.store import Tracker

if TYPE_CHECKING:  # the recorder reads their labels only; `report --sync` must not import torch
    from tuner.inputs.reference import Reference
    from tuner.measure.hardware import Hardware


def recommendation_tags(rec: Any | None) -> dict[str, str]:
    """The parent run's tags that name the recommended trial (none: `no_result`)."""
    if rec is None:
        return {"tuner.status": "no_result"}
    return {
        "tuner.status": "ok",
        "tuner.recommended_run_id": str(rec["mlflow_run_id"]),
        "tuner.recommended_config": str(rec["label"]),
    }


def close_parent(
    tracker: Tracker,
    parent_id: str,
    rec: Any | None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
) -> None:
    """Finish a search's parent run: FINISHED with its recommendation, else FAILED
    (a finished search, and `report --sync` of one, alike)."""
    tracker.log(parent_id, metrics=metrics, tags={**recommendation_tags(rec), **(tags or {})})
    tracker.finish(parent_id, "FINISHED" if rec is not None else "FAILED")


class TrialRecorder:
    """Driver-side record of finished trials: MLflow child run + progress line + trials.csv.

    Wrapped as a Ray Tune `Callback` by `search.tune.as_callback`.
    """

    def __init__(self, tracker: Tracker, parent_id: str, out: Path, ref: Reference, hw: Hardware, total: int):
        self.tracker, self.parent_id, self.out, self.ref, self.hw, self.total = (
            tracker,
            parent_id,
            out,
            ref,
            hw,
            total,
        )
        self.rows: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.started: dict[str, float] = {}
        self.baseline_p50: float | None = None

    def start(self, trial_id: str) -> None:
        self.started[trial_id] = time.perf_counter()

    def record(self, trial_id: str, config: dict[str, Any], result: TrialResult) -> None:
        if trial_id in self.seen:  # at-least-once delivery: never log a trial twice
            return
        self.seen.add(trial_id)
        variant = variant_from_config(config)
        index = len(self.rows)
        # The baseline is the first point proposed; with several nodes it need not finish first.
        is_baseline = variant == baseline(variant.threads) and not any(r["is_baseline"] for r in self.rows)
        if is_baseline and result.status is TrialStatus.OK:
            self.baseline_p50 = result.latency_p50_ms
            for r in self.rows:  # the trials that finished before it
                if r["latency_p50_ms"] and r["speedup_vs_baseline"] is None:
                    r["speedup_vs_baseline"] = self.baseline_p50 / r["latency_p50_ms"]
                    if r["mlflow_run_id"]:
                        self.tracker.log(r["mlflow_run_id"], metrics={"speedup_vs_baseline": r["speedup_vs_baseline"]})
        if result.latency_p50_ms and self.baseline_p50:
            result.speedup_vs_baseline = self.baseline_p50 / result.latency_p50_ms
        if trial_id in self.started:
            result.process_wall_s = time.perf_counter() - self.started[trial_id]
        row = {
            "trial": index,
            "trial_id": trial_id,
            "is_baseline": is_baseline,
            "label": variant.label,
            **variant.to_dict(),
            **{k: getattr(result, k) for k in METRICS},
            "status": result.status,
            "stable": result.stable,
            "interference": result.interference,
            "remeasured": result.remeasured,
            "node": result.node,
            "node_fingerprint": result.node_fingerprint,
            "error": result.error,
            "mlflow_run_id": "",
            "finished_at": time.time(),
        }
        tags = {
            **trial_tags(row),
            "tuner.weights": self.ref.weights_label,
            "tuner.data": self.ref.data_label,
            **self.hw.tags(),
        }
        if result.busy_processes:
            tags["tuner.busy_processes"] = result.busy_processes[:5000]
        self.rows.append(row)
        tables.write_tables(self.table(), self.out)  # on disk first: nothing measured is lost
        if result.traceback:
            (self.out / "tracebacks").mkdir(exist_ok=True)
            (self.out / "tracebacks" / f"{trial_id}.txt").write_text(result.traceback)
        logging_start = time.perf_counter()
        figures = result.figures()
        metrics = {k: v for k, v in figures.items() if k in MLFLOW_METRICS}
        run_id = self.tracker.log_child(
            self.parent_id, variant.label, variant.to_dict(), metrics, tags, failed=result.status in FAILED
        )
        if run_id:
            if result.traceback:
                self.tracker.log_text(run_id, result.traceback, "traceback.txt")
            row["mlflow_run_id"] = run_id
            row["mlflow_s"] = time.perf_counter() - logging_start
            tables.write_tables(self.table(), self.out)
        say(self.progress_line(row))

    def progress_line(self, row: dict[str, Any]) -> str:
        n = f"[{len(self.rows):>{len(str(self.total))}}/{self.total}]"
        where = f" on {row['node']} " if row.get("node") else ""
        head = f"{n}{where} {row['status']:<10} {row['label']:<38}"
        if row["status"] != TrialStatus.OK:
            return f"{head} {row['error'][:90]}"
        stream = row.get("stream_ips")  # a runtime that runs several calls at once: its stream too
        streamed = f" (stream {stream:.1f})" if stream is not None and stream != row["throughput_ips"] else ""
        return (
            f"{head} p50 {row['latency_p50_ms']:8.1f} ms  {row['throughput_ips']:8.1f} items/s{streamed}  "
            f"quality {row['quality']:.3f}  build {row['build_s']:.1f}s" + ("" if row["stable"] else "  (unstable)")
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    # ---- resume ------------------------------------------------------------------------
    def load_finished(self) -> None:
        """Take the finished trials of an interrupted search from trials.csv (resume)."""
        path = self.out / "trials.csv"
        if not path.exists():
            return
        df = tables.read_trials(path)
        drop = [c for c in SELECTION_COLUMNS if c in df]  # recomputed at the end
        self.rows = [
            {k: (None if pd.isna(v) else v) for k, v in r.items()} for r in df.drop(columns=drop).to_dict("records")
        ]
        for r in self.rows:
            r["error"] = r.get("error") or ""
            r["mlflow_run_id"] = r.get("mlflow_run_id") or ""
        self.seen = {str(r["trial_id"]) for r in self.rows}
        base = [r for r in self.rows if r.get("is_baseline") and r.get("status") == TrialStatus.OK]
        if base:
            self.baseline_p50 = float(base[0]["latency_p50_ms"])

    def known_keys(self) -> set[str]:
        return set(self.known_objectives())

    def known_objectives(self) -> dict[str, dict[str, float]]:
        """Config key -> the objectives the sampler saw for it (penalties for non-ok trials)."""
        return {
            str(r["label"]): objectives_of(r) if r.get("status") == TrialStatus.OK else dict(PENALTY) for r in self.rows
        }
