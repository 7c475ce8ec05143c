"""Search-space files: YAML -> validated `SearchSpace` -> Optuna define-by-run function.

A space file (`search_spaces/<model>.yaml`, or `--space FILE`) has five sections;
every key is optional and has the default shown by `search_spaces/default.yaml`:

    dimensions:  the choices of each Variant field (threads: `auto` = 1..cores per trial)
    search:      trials, time budget, objective, sampler
    constraints: max accuracy drop, max latency, max memory
    eval:        eval-set size, calibration-set size, input resolution, screen threshold
    timing:      the latency protocol's knobs (measure/latency.py)

Validation is done by pydantic with `extra="forbid"`, so a typo is an error that names
the file and the key. Validation has no side effects.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuner.errors import SpaceError
from tuner.measure.latency import TimingConfig
from tuner.variant import (
    BASELINE_FIELDS,
    CompileMode,
    Layout,
    Precision,
    Quantization,
    Variant,
    infeasible_reason,
)

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimensions(_Strict):
    precision: list[Precision] = Field(default=[Precision.FP32, Precision.BF16, Precision.FP16], min_length=1)
    quantization: list[Quantization] = Field(default=list(Quantization), min_length=1)
    batch_size: list[int] = Field(default=[1, 2, 4, 8, 16, 32], min_length=1)
    threads: Literal["auto"] | list[int] = "auto"
    compile: list[CompileMode] = Field(default=list(CompileMode), min_length=1)
    layout: list[Layout] = Field(default=list(Layout), min_length=1)

    @field_validator("batch_size")
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


class SearchSettings(_Strict):
    trials: int = Field(default=24, ge=1)
    time_budget_minutes: float | None = Field(default=12.0, gt=0)
    objective: Literal["latency", "throughput"] = "latency"
    sampler: Literal["tpe", "nsga2"] = "tpe"
    # Configs to run right after the baseline (partial: missing fields take the baseline's
    # values), e.g. `[{quantization: static_int8, compile: torchscript}]`.
    enqueue: list[dict[str, Any]] = []


class Limits(_Strict):
    """What one trial may use before it is stopped (guard.py). None: the defaults below."""

    trial_timeout_s: float | None = Field(default=None, gt=0)  # default: 5x the budget's share per trial, >= 120 s
    trial_memory_mb: float | None = Field(default=None, gt=0)  # default: 80% of the memory free at the start


class FaultRule(_Strict):
    """Test-only (`inject_faults:`): make a trial whose config matches `when` misbehave for real."""

    when: dict[str, Any] = {}  # variant fields that must all match; {} matches every trial
    action: Literal["raise", "abort", "hang", "allocate", "slow"]
    allocate_mb: int = Field(default=0, ge=0)  # `allocate`: how much to touch, 64 MB at a time
    delay_ms: float = Field(default=0, ge=0)  # `slow`: added to every call of the model


class Constraints(_Strict):
    max_accuracy_drop: float = Field(default=0.01, ge=0, le=1)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)


class EvalSettings(_Strict):
    samples: int = Field(default=32, ge=1)
    calibration_samples: int = Field(default=16, ge=1)
    input_size: int = Field(default=224, ge=8)
    screen_min_cosine: float = Field(default=0.9, ge=-1, le=1)


class ConfirmSettings(_Strict):
    """Finalist confirmation (confirm.py): re-measure the best Pareto configs interleaved."""

    finalists: int = Field(default=3, ge=0)  # 0 turns confirmation off
    rounds: int = Field(default=3, ge=1)
    include_baseline: bool = True  # confirmed speedups need a confirmed baseline


class SearchSpace(_Strict):
    dimensions: Dimensions = Dimensions()
    search: SearchSettings = SearchSettings()
    constraints: Constraints = Constraints()
    eval: EvalSettings = EvalSettings()
    timing: TimingConfig = TimingConfig()
    confirm: ConfirmSettings = ConfirmSettings()
    limits: Limits = Limits()
    inject_faults: list[FaultRule] = []  # test-only; README "Faults"

    # ---- loading -----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        raw = read_yaml_mapping(path, "space file", SpaceError)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise SpaceError(format_errors(path, e)) from None

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
            flags = FLAGS if source == "command-line flags" else None
            raise SpaceError(format_errors(source, e, flags)) from None

    # ---- feasibility ---------------------------------------------------------------
    def feasible_choices(
        self, *, cores: int, device: str, fp16_native: bool, bf16_native: bool, source: str = "space"
    ) -> dict[str, list[Any]]:
        """The dimension choices this hardware can run, as plain strings/ints.

        Returns the keys of `define_by_run`: precision, quantization, batch_size,
        threads, compile, compile_int8, layout. Raises SpaceError when nothing is left.
        """
        d = self.dimensions
        threads = list(range(1, cores + 1)) if d.threads == "auto" else list(d.threads)
        too_many = [t for t in threads if t > cores]
        if too_many:
            raise SpaceError(
                f"{source}: `dimensions.threads` lists {too_many}, but a trial can have at most "
                f"{cores} core(s) here; use values 1..{cores} or `auto`"
            )

        def ok(**fields: Any) -> bool:
            v = Variant(**{**BASELINE_FIELDS, **fields})
            return infeasible_reason(v, device=device, fp16_native=fp16_native, bf16_native=bf16_native) is None

        precision = [p.value for p in d.precision if ok(precision=p)]
        compile_fp = [c.value for c in d.compile]
        compile_int8 = [c.value for c in d.compile if ok(quantization="static_int8", compile=c)]
        quantization = [
            q.value
            for q in d.quantization
            if (q is Quantization.NONE and precision)
            or (q is not Quantization.NONE and compile_int8 and ok(quantization=q))
        ]
        if not quantization and not precision:
            raise SpaceError(
                f"{source}: no feasible precision/quantization is left on this hardware "
                f"(device={device}, fp16_native={fp16_native}, bf16_native={bf16_native})"
            )
        choices: dict[str, list[Any]] = {
            "quantization": quantization,
            "precision": precision,
            "compile": compile_fp,
            "compile_int8": compile_int8,
            "batch_size": list(d.batch_size),
            "threads": threads,
            "layout": [x.value for x in d.layout],
        }
        # Trial 0 is always the baseline (fp32, eager, batch 1), so its values are always
        # part of the space, whatever the file lists.
        for key, value in {**BASELINE_FIELDS, "batch_size": 1}.items():
            if value not in choices[key]:
                choices[key].insert(0, value)
        return choices


def define_by_run(trial: Any, choices: dict[str, list[Any]]) -> dict[str, Any] | None:
    """Optuna define-by-run space (module-level so that Ray can pickle it with `partial`).

    Conditional: int8 variants keep fp32 activations and sample their compile mode from
    `compile_int8` (a different Optuna parameter, since a categorical parameter's choices
    may not change between trials). The returned dict holds the constants Ray adds to
    the trial config.
    """
    quant = trial.suggest_categorical("quantization", choices["quantization"])
    const: dict[str, Any] = {}
    if quant == Quantization.NONE.value:
        trial.suggest_categorical("precision", choices["precision"])
        trial.suggest_categorical("compile", choices["compile"])
    else:
        const["precision"] = Precision.FP32.value
        trial.suggest_categorical("compile_int8", choices["compile_int8"])
    trial.suggest_categorical("batch_size", choices["batch_size"])
    trial.suggest_categorical("threads", choices["threads"])
    trial.suggest_categorical("layout", choices["layout"])
    return const


def space_function(choices: dict[str, list[Any]]) -> functools.partial[dict[str, Any] | None]:
    return functools.partial(define_by_run, choices=choices)


def variant_from_config(config: dict[str, Any]) -> Variant:
    """Tune config (sampled params + constants) -> Variant."""
    params = {k: v for k, v in config.items() if k in Variant.__dataclass_fields__}
    if "compile_int8" in config:
        params["compile"] = config["compile_int8"]
    return Variant.from_dict(params)


def config_key(config: dict[str, Any]) -> str:
    """Identity of a sampled config (the variant's label); module-level so it pickles."""
    return variant_from_config(config).label


def baseline_point(choices: dict[str, list[Any]]) -> dict[str, Any]:
    """Trial 0 as an Optuna point: fp32, eager, batch 1, the most threads the space offers
    (all cores of a trial with `threads: auto`)."""
    return {**BASELINE_FIELDS, "batch_size": 1, "threads": max(choices["threads"])}


# Families that often win on CPUs, tried right after the baseline so that a small budget
# still sees each kind of speedup once (Optuna's enqueue_trial; TPE takes over after them).
PROBES: tuple[dict[str, Any], ...] = (
    {"quantization": "static_int8", "compile_int8": "torchscript", "layout": "contiguous"},
    {"precision": "bf16", "compile": "inductor", "layout": "channels_last"},
    {"precision": "fp32", "compile": "torchscript", "layout": "channels_last"},
    {"precision": "bf16", "compile": "torchscript", "layout": "channels_last"},
)


def initial_points(
    choices: dict[str, list[Any]], trials: int, enqueue: list[dict[str, Any]] | tuple[()] = ()
) -> list[dict[str, Any]]:
    """The baseline, then the space's `search.enqueue` configs, then up to a quarter of the
    budget of PROBES that this space and this hardware allow (batch 1, all threads), so the
    sampler starts from diverse known-good points."""
    base = baseline_point(choices)
    points = [base]
    seen = {config_key(base)}
    for i, extra in enumerate(enqueue):
        point = {**base, **extra}
        if point.get("quantization", "none") != "none":
            point.setdefault("compile_int8", point.pop("compile", "eager"))
            point.pop("precision", None)
        outside = {k: v for k, v in point.items() if k not in choices or v not in choices[k]}
        if outside:  # e.g. a warm-start config from a space that has changed since
            print(f"note: `search.enqueue[{i}]` {extra} is not in this space on this hardware ({outside}): skipped")
            continue
        if config_key(point) not in seen:
            seen.add(config_key(point))
            points.append(point)
    for probe in PROBES:
        if len(points) > trials // 4:
            break
        point = {**base, **probe}
        if point["quantization"] != "none":
            point.pop("compile")
            point.pop("precision")
        if all(v in choices[k] for k, v in point.items()):
            points.append(point)
    return points


def resolve_space_file(model: str, space: str | Path | None) -> Path:
    """`--space FILE`, else `search_spaces/<model>.yaml`, else `search_spaces/default.yaml`."""
    if space is not None:
        return Path(space)
    own = SPACES_DIR / f"{model.replace(':', '_').replace('/', '_')}.yaml"
    return own if own.exists() else SPACES_DIR / "default.yaml"


# Space keys that CLI flags override, for error messages that name the flag the user typed.
FLAGS = {
    "search.trials": "--trials",
    "search.time_budget_minutes": "--time-budget",
    "search.objective": "--objective",
    "constraints.max_accuracy_drop": "--max-accuracy-drop",
    "constraints.max_latency_ms": "--max-latency-ms",
    "eval.samples": "--eval-samples",
}


def read_yaml_mapping(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty: {}); `error` names the file otherwise."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def _allowed_keys(section: tuple[Any, ...], root: Any = None) -> list[str]:
    """The keys a file validated by `root` (default: a space file) may have at `section`."""
    model: Any = root or SearchSpace
    for part in section:
        if isinstance(part, int):
            continue  # a list index: same model
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        inner = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            model = inner[0]  # list[Model]
        else:
            return []
    return list(model.model_fields)


def format_errors(
    source: str | Path, err: ValidationError, flags: dict[str, str] | None = None, root: Any = None, what: str = ""
) -> str:
    """One line per error: where (the file's key path, or the CLI flag), what is wrong, what
    was given. `root` is the pydantic model of the file (default: a space file)."""
    lines = [f"{source}: invalid {what or 'search space'}"]
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        got = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key; allowed here: {', '.join(_allowed_keys(e['loc'][:-1], root))}"
        if e["type"] == "enum" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        where = f"`{flags[loc]}` ({loc})" if flags and loc in flags else f"`{loc}`"
        lines.append(f"  {where}: {msg} (got {got!r})")
    return "\n".join(lines)
