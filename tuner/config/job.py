"""Nightly job files (`python -m tuner nightly JOBFILE.yaml`; docs/nightly.md):
which models to tune, where results go, and the regression settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from tuner.config.yamlio import Strict, format_errors, read_yaml_mapping
from tuner.core.console import safe_name
from tuner.core.errors import ConfigError


class ModelJob(Strict):
    model: str
    space: str | None = None  # a space file, relative to the job file (default: as for `search`)
    overrides: dict[str, Any] = {}  # space sections to override, e.g. {eval: {input_size: 64}}
    trials: int | None = Field(default=None, ge=1)
    time_budget_minutes: float | None = Field(default=None, gt=0)
    constraints: dict[str, Any] = {}  # e.g. {max_accuracy_drop: 0.01, max_latency_ms: 50}
    objective: Literal["latency", "throughput"] | None = None
    data: str | None = None  # relative to the job file
    weights: str = "auto"
    seed: int = 0
    # The Ray hardware class to tune for (docs/cluster.md): its own history,
    # champion and regression check. Models of different classes run at the same time.
    hardware: str | None = None
    # As `search --scenario/--latency-bound-ms` (docs/serving.md): server or offline adds the
    # serving search after the model search, and the regression check then measures the
    # champion's service too (docs/nightly.md). Default: the space file's `serving:` section.
    scenario: Literal["single-stream", "server", "offline"] | None = None
    latency_bound_ms: float | None = Field(default=None, gt=0)

    @property
    def folder(self) -> str:
        """Its output folder in a nightly run: one per model and class."""
        return safe_name(self.model if self.hardware is None else f"{self.model}@{self.hardware}")


class RegressionSettings(Strict):
    threshold: float = Field(default=0.10, gt=0)  # relative change that counts, at least
    drift_warning: float = Field(default=0.15, gt=0)  # machine drift beyond this gets its own warning
    # The served figure's band (a serving scenario): a QPS found by bisecting on a p99 moves
    # more than a median does. Chosen, not calibrated (docs/nightly.md).
    served_threshold: float = Field(default=0.25, gt=0)
    warm_start: bool = True


class Job(Strict):
    # Where results go: relative to the working directory, like `search`. Paths to inputs
    # (space files, data, weights) are relative to the job file.
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db
    experiment_prefix: str = "tuner"  # each model logs to <prefix>/<model>, beside `search`'s runs
    output: str = "nightly-results"  # one folder per run inside
    # The searches of the job (their trials): a model that would start later is reported as not
    # run. The regression checks and confirmations come on top; the reports show the real wall time.
    time_budget_minutes: float | None = Field(default=None, gt=0)
    regression: RegressionSettings = RegressionSettings()
    models: list[ModelJob] = Field(min_length=1)


def load_job(path: Path) -> Job:
    raw = read_yaml_mapping(path, "job file", ConfigError)
    try:
        return Job.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(path, e, Job, "job file")) from None
