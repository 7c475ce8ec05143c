"""Search-space files: YAML -> a validated, frozen `SearchSpace` (the Optuna space built
from it is search/sampling.py's).

A space file (`search_spaces/<model>.yaml`, or `--space FILE`) has these sections; every
key is optional and has the default shown by `search_spaces/default.yaml`:

    dimensions:    the choices of each Variant field (threads: `auto` = 1..cores per trial)
    search:        trials, time budget, objective, sampler, configs to enqueue
    constraints:   max accuracy drop, max latency, max memory
    eval:          eval-set size, calibration-set size, input resolution, screen threshold
    timing:        the latency protocol's knobs (measure/latency.py)
    confirm:       finalist confirmation (decide/finalists.py)
    limits:        a trial's time and memory limits (trial/process.py)
    serving:       the scenario, and the serving search after the model search (search/serving.py)
    inject_faults: test-only fault rules (trial/faults.py)

Validation is done by pydantic with `extra="forbid"`, so a typo is an error that names
the file and the key. Validation has no side effects.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from tuner.config.yamlio import Strict, format_errors, read_yaml_mapping
from tuner.core.console import safe_name
from tuner.core.errors import SpaceError
from tuner.core.variant import (
    CompileMode,
    Layout,
    Precision,
    Quantization,
)

# The space files ship inside the package (a wheel installs them); the repository's
# `search_spaces/` is a link to this folder, the path users type.
SPACES_DIR = Path(str(resources.files("tuner") / "search_spaces"))


class Dimensions(Strict):
    """The choices of each variant field."""

    precision: list[Precision] = Field(
        default=list(Precision), min_length=1,
        description="float precisions; tf32 on a GPU only, fp16 and bf16 only where the hardware has them natively",
    )  # fmt: skip
    quantization: list[Quantization] = Field(
        default=list(Quantization), min_length=1, description="int8 paths: each runtime's own (see Runtimes)"
    )
    batch_size: list[int] = Field(default=[1, 2, 4, 8, 16, 32], min_length=1, description="batch sizes on the CPU")
    batch_size_gpu: list[int] = Field(
        default=[1, 8, 32, 64, 128, 256], min_length=1, description="batch sizes on a GPU, in place of `batch_size`"
    )
    threads: Literal["auto"] | list[int] = Field(
        default="auto", description="`auto`: 1 .. the cores Ray gives one trial; or a list, e.g. [1, 2]"
    )
    compile: list[CompileMode] = Field(
        default=list(CompileMode), min_length=1, description="compile modes and runtimes (see Runtimes)"
    )
    layout: list[Layout] = Field(default=list(Layout), min_length=1, description="memory layouts (torch's modes only)")

    @field_validator("batch_size", "batch_size_gpu")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"every batch size must be >= 1, got {v}")
        return sorted(set(v))

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: Literal["auto"] | list[int]) -> Literal["auto"] | list[int]:
        if isinstance(v, list):
            if not v:
                raise ValueError("must list at least one thread count, or be `auto`")
            if any(t < 1 for t in v):
                raise ValueError(f"every thread count must be >= 1, got {v}")
            return sorted(set(v))
        return v


class TimingConfig(Strict):
    """The protocol's knobs; the `timing:` section of a space file."""

    warmup_min_iters: int = Field(default=3, ge=1, description="warm-up calls at least")
    warmup_max_s: float = Field(default=20.0, gt=0, description="warm-up ends here even if the windows never agreed")
    window_s: float = Field(default=0.2, gt=0, description="length of one timing window")
    min_iters: int = Field(default=10, ge=1, description="timed calls at least")
    min_time_s: float = Field(default=1.5, ge=0, description="timed seconds at least")
    max_time_s: float = Field(default=8.0, gt=0, description="the timed phase's cap (then `stable` is false)")
    stable_windows: int = Field(default=3, ge=2, description="the last windows that must agree")
    tolerance: float = Field(default=0.05, gt=0, description="how closely they agree: relative spread of their medians")
    # The interference guard samples other CPU use this long right before and right after
    # timing (measure/interference.py); tests shorten it.
    load_sample_s: float = Field(
        default=0.5, gt=0, description="other processes' CPU use is sampled this long before and after timing"
    )


class SearchSettings(Strict):
    """How long a search runs and what it optimises."""

    trials: int = Field(default=24, ge=1, description="trials, the baseline included (`--trials`)")
    time_budget_minutes: float | None = Field(
        default=12.0, gt=0, description="no new trial starts after this (`--time-budget`)"
    )
    objective: Literal["latency", "throughput"] = Field(
        default="latency", description="what the recommendation optimises (`--objective`)"
    )
    sampler: Literal["tpe", "nsga2"] = Field(default="tpe", description="Optuna's sampler (both multi-objective)")
    # Configs to run right after the baseline (partial: missing fields take the baseline's
    # values), e.g. `[{quantization: static_int8, compile: torchscript}]`.
    enqueue: list[dict[str, Any]] = Field(
        default=[], description="configs to run right after the baseline; missing fields take the baseline's values"
    )


class TrialLimits(Strict):
    """What one trial may use before it is stopped (trial/process.py). None: the defaults below."""

    trial_timeout_s: float | None = Field(
        default=None, gt=0, description="a trial's wall-time limit; null: 5x its share of the budget, at least 120 s"
    )
    trial_memory_mb: float | None = Field(
        default=None, gt=0, description="a trial's resident-memory limit; null: 80% of the memory free at the start"
    )


class FaultRule(Strict):
    """Test-only (`inject_faults:`): make a trial whose config matches `when` misbehave for real."""

    when: dict[str, Any] = Field(default={}, description="variant fields that must all match; {} matches every trial")
    action: Literal["raise", "abort", "hang", "allocate", "slow"] = Field(description="what the trial does")
    allocate_mb: int = Field(default=0, ge=0, description="`allocate`: how much to touch, 64 MB at a time")
    delay_ms: float = Field(default=0, ge=0, description="`slow`: added to every call of the model")
    factor: float = Field(default=1.0, ge=1.0, description="`slow`: every call takes this many times as long")


class Constraints(Strict):
    """What a recommendation must meet."""

    max_accuracy_drop: float = Field(
        default=0.01, ge=0, le=1, description="relative quality drop against the fp32 baseline (`--max-accuracy-drop`)"
    )
    max_latency_ms: float | None = Field(default=None, gt=0, description="p90 latency limit (`--max-latency-ms`)")
    max_memory_mb: float | None = Field(
        default=None, gt=0, description="a trial's peak resident memory (on a GPU: its peak device memory)"
    )


class EvalSettings(Strict):
    """The eval and calibration data (see Models, weights and data)."""

    samples: int = Field(default=32, ge=1, description="eval-set size (`--eval-samples`)")
    calibration_samples: int = Field(
        default=16, ge=1, description="static int8's calibration set, disjoint from the eval set"
    )
    input_size: int = Field(default=224, ge=8, description="input resolution, unless the model fixes its own")
    screen_min_cosine: float = Field(
        default=0.9, ge=-1, le=1, description="a first batch whose cosine with fp32 is below this is `inaccurate`"
    )


class ConfirmSettings(Strict):
    """Finalist confirmation (decide/finalists.py): re-measure the best Pareto configs interleaved."""

    finalists: int = Field(default=3, ge=0, description="configs re-measured; 0 turns confirmation off")
    rounds: int = Field(default=3, ge=1, description="interleaved rounds, a fresh process per measurement")
    include_baseline: bool = Field(default=True, description="the baseline too: confirmed speedups need it")


IMAGE_SIZE_FORM = "expected WIDTHxHEIGHT in pixels, each 16 to 8192 (e.g. 1920x1080)"


def image_size_of(text: str) -> tuple[int, int] | None:
    """`WxH` (the load test's and the serving search's JPEG size) -> (W, H); None if malformed."""
    w, sep, h = str(text).lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or not (16 <= int(w) <= 8192 and 16 <= int(h) <= 8192):
        return None
    return int(w), int(h)


class ServingSettings(Strict):
    """`--scenario server|offline`: after the model search, a second search over how its
    finalists are served (search/serving.py, docs/serving.md)."""

    scenario: Literal["single-stream", "server", "offline"] = Field(
        default="single-stream",
        description="single-stream: the model search alone; server: then the highest QPS at p99 <= the bound; "
        "offline: then the most images/s (`--scenario`)",
    )
    latency_bound_ms: float = Field(default=50.0, gt=0, description="server: the p99 bound (`--latency-bound-ms`)")
    trials: int = Field(default=8, ge=1, description="serving trials, the pick's default service included")
    variants: int = Field(default=3, ge=1, description="finalists served: the pick, the best throughput, then latency")
    max_batch_size: list[int] = Field(default=[1, 2, 4, 8, 16], min_length=1, description="requests per model call")
    batch_wait_ms: list[float] = Field(default=[0, 2, 5, 10, 20], min_length=1, description="longest wait to fill one")
    replicas: Literal["auto"] | list[int] = Field(
        default="auto", description="auto: every replicas x threads layout that fits the hardware class's cores"
    )
    ongoing_per_batch: list[int] = Field(
        default=[1, 2, 4], min_length=1, description="max_ongoing_requests per replica, as multiples of the batch"
    )
    request: Literal["npy", "jpeg"] = Field(default="npy", description="what the load generator sends")
    image_size: str = Field(
        default="500x375", description="request: jpeg: the images' WIDTHxHEIGHT in pixels (`--image-size`)"
    )
    duration_s: float = Field(default=4.0, gt=0, description="LoadGen's shortest run, per target QPS")
    min_queries: int = Field(default=300, ge=1, description="LoadGen's fewest queries per run (p99: several hundred)")
    max_steps: int = Field(default=4, ge=1, description="server: target QPS tried per trial (a bisection)")

    @field_validator("max_batch_size", "ongoing_per_batch", "replicas")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, list) and any(int(x) < 1 for x in v):
            raise ValueError("every value must be at least 1")
        return v

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: str) -> str:
        if image_size_of(v) is None:
            raise ValueError(IMAGE_SIZE_FORM)
        return v

    @field_validator("batch_wait_ms")
    @classmethod
    def _wait(cls, v: list[float]) -> list[float]:
        if any(not 0 <= x <= 10_000 for x in v):
            raise ValueError("every wait must be from 0 to 10000 ms")
        return v


class SearchSpace(Strict):
    dimensions: Dimensions = Dimensions()
    search: SearchSettings = SearchSettings()
    constraints: Constraints = Constraints()
    eval: EvalSettings = EvalSettings()
    timing: TimingConfig = TimingConfig()
    confirm: ConfirmSettings = ConfirmSettings()
    limits: TrialLimits = TrialLimits()
    serving: ServingSettings = ServingSettings()
    inject_faults: list[FaultRule] = Field(default=[], description="test-only fault rules (see Faults)")

    # ---- loading -----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        raw = read_yaml_mapping(path, "space file", SpaceError)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise SpaceError(format_errors(path, e, SearchSpace, "search space")) from None

    def with_overrides(self, source: str = "command-line flags", **sections: Any) -> SearchSpace:
        """Apply overrides, e.g. `with_overrides(search={"trials": 5})` (None values are
        ignored; a list section such as `inject_faults` is replaced); re-validated. Errors
        name `source` (the CLI flags by default, or a job file)."""
        data = self.model_dump(mode="json")
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update({k: v for k, v in values.items() if v is not None})
            else:
                data[section] = values
        try:
            return SearchSpace.model_validate(data)
        except ValidationError as e:
            flags = FLAG_OF_KEY if source == "command-line flags" else None
            raise SpaceError(format_errors(source, e, SearchSpace, "search space", flags)) from None


def resolve_space_file(model: str, space: str | Path | None) -> Path:
    """`--space FILE`, else `search_spaces/<model>.yaml`, else `search_spaces/default.yaml`."""
    if space is not None:
        return Path(space)
    own = SPACES_DIR / f"{safe_name(model)}.yaml"
    return own if own.exists() else SPACES_DIR / "default.yaml"


# Space keys that CLI flags override, for error messages that name the flag the user typed.
FLAG_OF_KEY = {
    "search.trials": "--trials",
    "search.time_budget_minutes": "--time-budget",
    "search.objective": "--objective",
    "constraints.max_accuracy_drop": "--max-accuracy-drop",
    "constraints.max_latency_ms": "--max-latency-ms",
    "eval.samples": "--eval-samples",
    "serving.scenario": "--scenario",
    "serving.latency_bound_ms": "--latency-bound-ms",
    "serving.image_size": "--image-size",
}
