"""The trial result and its schema: what one trial measured, in one typed place.

`TrialResult` is what `trial.evaluate` returns and what the driver records. Every figure is
one field declared with `metric(...)`, which says its unit, what it means, whether it goes to
MLflow, and how the terminal shows it. Everything else is derived from these declarations:

* `METRICS`: the figures, in trials.csv column order (also the child runs' MLflow metrics,
  less those declared `mlflow=False`);
* `OBJECTIVES` and `PENALTY`: what the sampler and the Pareto front optimise;
* `COLUMNS`: the whole trials.csv header; `SHOWN`: the terminal/report table;
* `trial_tags` / `row_from_run`: a trial's child-run tags, and the row read back from them.

Adding a figure is one line here, plus the code that measures it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from tuner.core.variant import StrEnum, Variant

Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    doc: str
    mlflow: bool = True  # logged as a child-run metric
    objective: Direction | None = None  # optimised by the sampler and the Pareto front
    shown: str = ""  # the terminal/report column heading; "" = not shown
    fmt: str = "{:.1f}"  # how the terminal shows it (`{:%}` style for fractions)


def metric(unit: str, doc: str, **kw: Any) -> Any:
    """Declare one figure of `TrialResult` (None until measured)."""
    return field(default=None, metadata={"metric": (unit, doc, kw)})


class TrialStatus(StrEnum):
    """How a trial ended. Every status but ok carries its `error` text. A StrEnum: it is its
    own value in trials.csv, MLflow tags and the terminal, and equal to that string."""

    OK = "ok"
    INFEASIBLE = "infeasible"  # known not to work here: nothing was built
    FAILED = "failed"  # a runtime refused the variant (trial/evaluate.py `refused`), or the process crashed
    ERROR = "error"  # the trial raised anything else: most likely tuner's own bug, not the variant's fault
    INACCURATE = "inaccurate"  # the first batch was far from fp32: not timed
    TIMEOUT = "timeout"  # the trial's watchdog killed it: too long
    OOM = "oom"  # the trial's watchdog killed it: too much memory


STATUSES: tuple[str, ...] = tuple(s.value for s in TrialStatus)
FAILED = (TrialStatus.FAILED, TrialStatus.ERROR, TrialStatus.TIMEOUT, TrialStatus.OOM)  # MLflow run FAILED


@dataclass
class TrialResult:
    status: TrialStatus = TrialStatus.OK
    error: str = ""
    traceback: str = field(default="", repr=False)  # kept as an artifact, never a column
    stable: bool = False  # the timed windows agreed (measure/latency.py)
    interference: bool = False  # other CPU use while timing (measure/interference.py)
    remeasured: bool = False  # timed again because the box was busy
    busy_processes: str = ""  # who was busy, if anyone
    node: str = ""  # the Ray node that measured it (search/cluster.py `node_name`)
    node_fingerprint: str = ""  # that node's hardware fingerprint

    # ---- figures, in trials.csv column order ------------------------------------------
    latency_p50_ms: float | None = metric("ms", "median call latency", shown="p50 ms")
    latency_p90_ms: float | None = metric("ms", "90th percentile call latency", objective="min", shown="p90 ms")
    latency_p99_ms: float | None = metric("ms", "99th percentile call latency")
    latency_mean_ms: float | None = metric("ms", "mean call latency (with the median, never alone)")
    latency_std_ms: float | None = metric("ms", "standard deviation of the call latency")
    latency_iqr_ms: float | None = metric("ms", "interquartile range of the call latency")
    latency_n: float | None = metric("calls", "timed calls")
    throughput_ips: float | None = metric("items/s", "items per second of timed wall time, one call at a time",
                                          shown="items/s")  # fmt: skip
    # The throughput objective: calls issued back to back, a runtime's queue never drained
    # (build/runtime.py `Stream`; OpenVINO THROUGHPUT only). One call at a time: = throughput_ips.
    stream_ips: float | None = metric("items/s", "items per second with calls issued back to back",
                                      objective="max", shown="stream/s")  # fmt: skip
    top1_agreement: float | None = metric("fraction", "top-1 equal to the fp32 reference's")
    cosine_similarity: float | None = metric("", "mean cosine of the logits against fp32")
    max_abs_error: float | None = metric("", "largest absolute logit error against fp32")
    top1: float | None = metric("fraction", "top-1 accuracy on labels (labeled data only)")
    top5: float | None = metric("fraction", "top-5 accuracy on labels (labeled data only)")
    quality: float | None = metric("fraction", "top1 with labels, else top1_agreement", objective="max",
                                   shown="quality", fmt="{:.3f}")  # fmt: skip
    accuracy_drop: float | None = metric("fraction", "relative quality drop against the baseline", shown="drop",
                                         fmt="{:.2%}")  # fmt: skip
    speedup_vs_baseline: float | None = metric("x", "baseline p50 / this p50 (search time)", shown="speedup",
                                               fmt="{:.2f}x")  # fmt: skip
    latency_window_spread: float | None = metric("fraction", "spread of the last timed windows' medians")
    achieved_gflops: float | None = metric("GFLOP/s", "model FLOPs x items/s")
    ceiling_fraction: float | None = metric("fraction", "achieved / the hardware ceiling", shown="ceiling",
                                            fmt="{:.0%}")  # fmt: skip
    ceiling_gflops: float | None = metric("GFLOP/s", "the ceiling this trial was compared against")
    build_s: float | None = metric("s", "build: precision, quantize, layout, compile", shown="build s")
    measure_s: float | None = metric("s", "timing and accuracy pass")
    warmup_s: float | None = metric("s", "warm-up before timing")
    warmup_iters: float | None = metric("calls", "warm-up calls")
    peak_rss_mb: float | None = metric("MB", "peak resident memory of the trial's process")
    peak_device_mb: float | None = metric("MB", "peak accelerator memory (CUDA only)")
    model_size_mb: float | None = metric("MB", "parameters and buffers of the built model")
    load_start: float | None = metric("", "1-minute load average when the trial started")
    load_end: float | None = metric("", "1-minute load average when it ended")
    busy_cores_start: float | None = metric("cores", "other processes' CPU use right before timing")
    busy_cores_end: float | None = metric("cores", "other processes' CPU use right after timing")
    trial_wall_s: float | None = metric("s", "the trial's wall time in its Ray actor")
    process_wall_s: float | None = metric("s", "start to record in the driver, overhead included")
    mlflow_s: float | None = metric("s", "writing the child run", mlflow=False)
    nice: float | None = metric("", "the niceness the trial's process ran at")
    runtime_threads: float | None = metric("threads", "the intra-op threads the runtime reports it was given")
    runtime_requests: float | None = metric("requests", "OpenVINO THROUGHPUT: parallel requests a batch is split over")
    onnx_exporter_dynamo: float | None = metric("", "ONNX Runtime: 1 = dynamo exporter, 0 = TorchScript fallback")

    def __post_init__(self) -> None:
        if not isinstance(self.status, TrialStatus):  # from a report: a plain string
            try:
                self.status = TrialStatus(self.status)
            except ValueError:
                raise ValueError(f"trial status {self.status!r}; allowed: {', '.join(STATUSES)}") from None

    # ---- conversions -------------------------------------------------------------------
    @classmethod
    def of(cls, measured: dict[str, Any], **fields: Any) -> TrialResult:
        """From what the measuring functions returned, keyed by field name. An unknown key
        is a TypeError: a figure must be declared above before it can be reported."""
        return cls(**measured, **fields)

    @classmethod
    def from_report(cls, result: dict[str, Any]) -> TrialResult:
        """From a dict that Ray Tune (or a fresh process) passed on: our fields only; Ray
        adds keys of its own (`time_this_iter_s`, `config`, ...)."""
        return cls(**{k: v for k, v in result.items() if k in _FIELD_NAMES})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the status as its string), for Ray's reports and the tables."""
        return {**asdict(self), "status": self.status.value}

    def report(self) -> dict[str, Any]:
        """What `tune.report` gets: every field, plus the sampler's objectives."""
        return {**self.to_dict(), **self.objectives()}

    def figures(self) -> dict[str, float]:
        """The figures that were measured (None and NaN left out)."""
        out = {}
        for name in METRICS:
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                out[name] = float(v)
        return out

    def objectives(self) -> dict[str, float]:
        """The sampler's objectives: the real figures for ok, penalties otherwise (a FAIL
        would make TPE re-propose the same broken config)."""
        if self.status is not TrialStatus.OK:
            return dict(PENALTY)
        return objectives_of(self.to_dict())


SCHEMA: tuple[Metric, ...] = tuple(
    Metric(f.name, f.metadata["metric"][0], f.metadata["metric"][1], **f.metadata["metric"][2])
    for f in fields(TrialResult)
    if "metric" in f.metadata
)
_FIELD_NAMES = {f.name for f in fields(TrialResult)}
METRICS: tuple[str, ...] = tuple(m.name for m in SCHEMA)
MLFLOW_METRICS: tuple[str, ...] = tuple(m.name for m in SCHEMA if m.mlflow)
# The Pareto front's axes: figure -> direction. Ray/Optuna see them as `objective_<figure>`.
OBJECTIVES: dict[str, Direction] = {m.name: m.objective for m in SCHEMA if m.objective}
SAMPLER_OBJECTIVES: dict[str, Direction] = {f"objective_{k}": d for k, d in OBJECTIVES.items()}
PENALTY: dict[str, float] = {k: (1e7 if d == "min" else 0.0) for k, d in SAMPLER_OBJECTIVES.items()}


def objectives_of(figures: dict[str, Any]) -> dict[str, float]:
    """The sampler's objectives from an ok trial's figures (a TrialResult's, or a trials.csv row)."""
    return {f"objective_{k}": float(figures[k]) for k in OBJECTIVES}


# Confirmation (decide/confirm.py): finalists re-measured in fresh processes, interleaved.
# One rule names every confirmed figure: `confirmed_<figure>`, and for a figure with a 95%
# interval `confirmed_<figure>_low` and `confirmed_<figure>_high` (`confirmed()`), where
# <figure> is the trial figure it confirms (the latency percentiles without `latency_`).
# The ceiling fraction is against the machine
# probe of the config's precision, measured in the same rounds; the speedup pairs each
# round's measurement with the baseline's.
CONFIRMED_INTERVALS = ("p50_ms", "throughput_ips", "stream_ips", "speedup_vs_baseline", "ceiling_fraction")
CONFIRMED_VALUES = ("p90_ms", "rounds")  # no interval


def confirmed(figure: str) -> tuple[str, str, str]:
    """The columns of a confirmed figure with an interval: value, low, high."""
    return f"confirmed_{figure}", f"confirmed_{figure}_low", f"confirmed_{figure}_high"


CONFIRMED_COLUMNS: tuple[str, ...] = (
    *confirmed("p50_ms"),
    "confirmed_p90_ms",
    *confirmed("throughput_ips"),
    *confirmed("stream_ips"),
    "confirmed_rounds",
    *confirmed("speedup_vs_baseline"),
    *confirmed("ceiling_fraction"),
)
# The names before that rule (a trials.csv, or the child runs, of an earlier search): read
# back under the new ones (outputs/tables.py).
CONFIRMED_RENAMED = {
    "confirmed_p50_ci_low_ms": "confirmed_p50_ms_low",
    "confirmed_p50_ci_high_ms": "confirmed_p50_ms_high",
    "confirmed_throughput_ci_low": "confirmed_throughput_ips_low",
    "confirmed_throughput_ci_high": "confirmed_throughput_ips_high",
    "confirmed_speedup_ci_low": "confirmed_speedup_vs_baseline_low",
    "confirmed_speedup_ci_high": "confirmed_speedup_vs_baseline_high",
    "confirmed_ceiling_fraction_ci_low": "confirmed_ceiling_fraction_low",
    "confirmed_ceiling_fraction_ci_high": "confirmed_ceiling_fraction_high",
}

# ---- trials.csv ----------------------------------------------------------------------
VARIANT_COLUMNS: tuple[str, ...] = tuple(Variant.__dataclass_fields__)
LEAD_COLUMNS = ("trial", "trial_id", "is_baseline", "label")
STATUS_COLUMNS = ("status", "stable", "interference", "remeasured")
SELECTION_COLUMNS = ("feasible", "pareto", "recommended")  # recomputed at the end of a search
# Where it was measured: the trial's node, and the nodes of its confirmation measurements.
PLACE_COLUMNS = ("node", "node_fingerprint", "confirmed_nodes", "confirmed_fingerprints")
TAIL_COLUMNS = (
    *CONFIRMED_COLUMNS,
    *STATUS_COLUMNS,
    *SELECTION_COLUMNS,
    *PLACE_COLUMNS,
    "error",
    "mlflow_run_id",
    "finished_at",
)
COLUMNS = (*LEAD_COLUMNS, *VARIANT_COLUMNS, *METRICS, *TAIL_COLUMNS)

# The terminal/report table: heading and format per column.
SHOWN: dict[str, tuple[str, str]] = {
    "label": ("config", "{}"),
    "status": ("status", "{}"),
    **{m.name: (m.shown, m.fmt) for m in SCHEMA if m.shown},
}

# ---- child-run tags --------------------------------------------------------------------
# trials.csv column -> the child-run tag that carries it; `report` reads rows back from them.
TAGS = {
    "trial_id": "ray.trial_id",
    "status": "tuner.status",
    "stable": "tuner.stable",
    "interference": "tuner.interference",
    "remeasured": "tuner.remeasured",
    "pareto": "tuner.pareto",
    "recommended": "tuner.recommended",
    "is_baseline": "tuner.baseline",
    "trial": "tuner.trial_index",
    "error": "tuner.error",
    "node": "tuner.node",
    "node_fingerprint": "tuner.node_fingerprint",
    "confirmed_nodes": "tuner.confirmed_nodes",
    "confirmed_fingerprints": "tuner.confirmed_fingerprints",
}
TEXT_COLUMNS = ("error", *PLACE_COLUMNS)  # tagged only when not empty
FLAG_COLUMNS = ("stable", "interference", "remeasured", "pareto", "recommended", "is_baseline")  # "true"/"false"


def _flag(v: Any) -> str:
    return str(bool(v) and not (isinstance(v, float) and math.isnan(v))).lower()


def trial_tags(row: Any) -> dict[str, str]:
    """A trial's `tuner.*` tags from its trials.csv row (a dict or a pandas row), for the
    recorder and `report --sync` alike, so a synced trial filters like any other."""
    tags = {}
    for col, tag in TAGS.items():
        v = row.get(col)
        if col in FLAG_COLUMNS:
            tags[tag] = _flag(v)
        elif col in TEXT_COLUMNS:
            if isinstance(v, str) and v:
                tags[tag] = v[:5000]
        else:
            tags[tag] = str(v)
    return tags


def selection_tags(row: Any) -> dict[str, str]:
    """The tags that change when a search ends: the Pareto and recommended flags."""
    return {TAGS[c]: _flag(row.get(c)) for c in ("pareto", "recommended")}


def row_from_run(
    params: dict[str, str], metrics: dict[str, float], tags: dict[str, str], run_id: str
) -> dict[str, Any]:
    """A trials.csv row read back from a child run (the inverse of what the recorder logs;
    confirmed figures logged under their names before the rule read back under the new; a
    run from before `stream_ips` gets it from `throughput_ips`, the figure it measured)."""
    renamed = {CONFIRMED_RENAMED.get(k, k): v for k, v in metrics.items()}
    if "stream_ips" not in renamed and "throughput_ips" in renamed:
        renamed["stream_ips"] = renamed["throughput_ips"]
    row: dict[str, Any] = {**params, **renamed, "label": tags.get("mlflow.runName", ""), "mlflow_run_id": run_id}
    for col, tag in TAGS.items():
        v = tags.get(tag)
        if col in FLAG_COLUMNS:
            row[col] = v == "true"
        elif col == "trial":
            row[col] = int(v) if v is not None else -1
        else:
            row[col] = v or ""
    return row
