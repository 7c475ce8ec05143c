"""Driver-side record of finished trials: one MLflow child run, one progress line and a
rewritten trials.csv per trial, so nothing measured is lost if the search stops early.

Kept free of Ray types (the Tune callback in `search.py` forwards to it), so tests drive it
with plain dicts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from tuner import report
from tuner.guard import classify
from tuner.hardware import Hardware
from tuner.reference import Reference
from tuner.space import variant_from_config
from tuner.tracking import Tracker
from tuner.trial import METRICS, PENALTY, objectives
from tuner.variant import baseline

FAILED = ("failed", "timeout", "oom")  # statuses whose child run is marked FAILED in MLflow


def _flag(row: dict[str, Any] | pd.Series, col: str) -> str:
    v = row.get(col, False)
    return str(bool(v) and not pd.isna(v)).lower()


def trial_tags(row: dict[str, Any] | pd.Series) -> dict[str, str]:
    """The `tuner.*` tags of a trial's child run, from its trials.csv row (recorder and
    `report --sync` alike, so a synced trial filters like any other)."""
    tags = {
        "ray.trial_id": str(row["trial_id"]),
        "tuner.status": str(row["status"]),
        "tuner.stable": _flag(row, "stable"),
        "tuner.pareto": _flag(row, "pareto"),
        "tuner.recommended": _flag(row, "recommended"),
        "tuner.baseline": _flag(row, "is_baseline"),
        "tuner.trial_index": str(row["trial"]),
    }
    error = row.get("error")
    if isinstance(error, str) and error:
        tags["tuner.error"] = error[:5000]
    return tags


def say(msg: str = "") -> None:
    print(msg, flush=True)


class TrialRecorder:
    """Driver-side record of finished trials: MLflow child run + progress line + trials.csv.

    Created as a Ray Tune `Callback` by `_as_callback`; kept free of Ray types so it can be
    unit-tested with plain dicts.
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

    def record(self, trial_id: str, config: dict[str, Any], result: dict[str, Any] | None, error: str = "") -> None:
        if trial_id in self.seen:  # at-least-once delivery: never log a trial twice
            return
        self.seen.add(trial_id)
        variant = variant_from_config(config)
        res = dict(result or {})
        if result is None:
            res.update(classify(None, error or "trial errored"))
        index = len(self.rows)
        is_baseline = index == 0 and variant == baseline(variant.threads)
        p50 = res.get("latency_p50_ms")
        if is_baseline and res.get("status") == "ok":
            self.baseline_p50 = p50
        if p50 and self.baseline_p50:
            res["speedup_vs_baseline"] = self.baseline_p50 / p50
        if trial_id in self.started:
            res["process_wall_s"] = time.perf_counter() - self.started[trial_id]
        status = str(res.get("status", "failed"))
        row = {
            "trial": index,
            "trial_id": trial_id,
            "is_baseline": is_baseline,
            "label": variant.label,
            **variant.to_dict(),
            **{k: res.get(k) for k in METRICS},
            "status": status,
            "stable": bool(res.get("stable", False)),
            "interference": bool(res.get("interference", False)),
            "remeasured": bool(res.get("remeasured", False)),
            "error": res.get("error", ""),
            "mlflow_run_id": "",
            "finished_at": time.time(),
        }
        tags = {
            **trial_tags(row),
            "tuner.weights": self.ref.weights_label,
            "tuner.data": self.ref.data_label,
            **self.hw.tags(),
        }
        if "interference" in res:
            tags["tuner.interference"] = str(bool(res["interference"])).lower()
            tags["tuner.remeasured"] = str(bool(res["remeasured"])).lower()
            if res.get("busy_processes"):
                tags["tuner.busy_processes"] = str(res["busy_processes"])[:5000]
        self.rows.append(row)
        report.write_tables(self.table(), self.out)  # on disk first: nothing measured is lost
        if res.get("traceback"):
            (self.out / "tracebacks").mkdir(exist_ok=True)
            (self.out / "tracebacks" / f"{trial_id}.txt").write_text(str(res["traceback"]))
        logging_start = time.perf_counter()
        metrics = {k: float(res[k]) for k in METRICS if isinstance(res.get(k), (int, float))}
        run_id = self.tracker.log_child(
            self.parent_id, variant.label, variant.to_dict(), metrics, tags, failed=status in FAILED
        )
        if run_id:
            if res.get("traceback"):
                self.tracker.log_text(run_id, str(res["traceback"]), "traceback.txt")
            row["mlflow_run_id"] = run_id
            row["mlflow_s"] = time.perf_counter() - logging_start
            report.write_tables(self.table(), self.out)
        say(self.progress_line(row))

    def progress_line(self, row: dict[str, Any]) -> str:
        n = f"[{len(self.rows):>{len(str(self.total))}}/{self.total}]"
        head = f"{n} {row['status']:<10} {row['label']:<38}"
        if row["status"] != "ok":
            return f"{head} {row['error'][:90]}"
        return (
            f"{head} p50 {row['latency_p50_ms']:8.1f} ms  {row['throughput_ips']:8.1f} items/s  "
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
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        drop = [c for c in ("feasible", "pareto", "recommended") if c in df]  # recomputed at the end
        self.rows = [
            {k: (None if pd.isna(v) else v) for k, v in r.items()} for r in df.drop(columns=drop).to_dict("records")
        ]
        for r in self.rows:
            r["error"] = r.get("error") or ""
            r["mlflow_run_id"] = r.get("mlflow_run_id") or ""
        self.seen = {str(r["trial_id"]) for r in self.rows}
        base = [r for r in self.rows if r.get("is_baseline") and r.get("status") == "ok"]
        if base:
            self.baseline_p50 = float(base[0]["latency_p50_ms"])

    def known_keys(self) -> set[str]:
        return set(self.known_objectives())

    def known_objectives(self) -> dict[str, dict[str, float]]:
        """Config key -> the objectives the sampler saw for it (penalties for non-ok trials)."""
        return {str(r["label"]): objectives(r) if r.get("status") == "ok" else dict(PENALTY) for r in self.rows}
