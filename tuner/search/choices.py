"""The sampler's conditional space, derived from one table: what each compile mode runs, as
its module under build/ declares it (`tuner.build.ACCEPTS`, core.variant.Accepts).

    feasible_choices   the values of each Optuna parameter this hardware can run
    define_by_run      the Optuna define-by-run space: conditional on the compile mode
    to_params          its inverse: a flat variant as the parameters it would be drawn as

Some pairs of values are not a variant at all (ONNX Runtime has no bf16 on the CPU, OpenVINO
and ONNX Runtime take NCHW input, the THROUGHPUT hint needs a batch to split). The space
never draws one: the quantization first, then the compile mode from the modes that run
that quantization (int8 and dynamic int8 draw theirs from `compile_int8` / `compile_dynamic`,
Optuna parameters of their own, since a categorical parameter's choices may not change
between trials), then only what that mode has a choice of: a precision (`precision`, or
`precision_int8` for int8 whose float layers run at a drawn precision), a batch
(`batch_split`, sizes >= 2, for a mode that splits its batch), a layout. A fixed value is a
constant of the trial's config; `SAMPLER_ALIASES` maps the conditional names back to Variant
fields. A new runtime is one declaration in its build module: this space follows.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from tuner.build import ACCEPTS, infeasible
from tuner.config.space import SearchSpace
from tuner.core.errors import ConfigError, SpaceError
from tuner.core.variant import (
    BASELINE_FIELDS,
    CompileMode,
    Device,
    Layout,
    Precision,
    Quantization,
    Variant,
    config_key,
    variant_from_config,
)

COMPILE_PARAM = {Quantization.NONE: "compile", Quantization.STATIC_INT8: "compile_int8",
                 Quantization.DYNAMIC_INT8: "compile_dynamic"}  # fmt: skip


def feasible_choices(
    space: SearchSpace, *, cores: int, device: str, fp16_native: bool, bf16_native: bool, source: str = "space"
) -> dict[str, list[Any]]:
    """The values each parameter of `define_by_run` may take on this hardware, as plain
    strings and ints: quantization, precision, compile, compile_int8, compile_dynamic,
    precision_int8, batch_size, batch_split, threads, layout. Raises SpaceError when nothing
    is left. A value is offered when some variant with it runs here."""
    d = space.dimensions
    threads = list(range(1, cores + 1)) if d.threads == "auto" else list(d.threads)
    too_many = [t for t in threads if t > cores]
    if too_many:
        raise SpaceError(
            f"{source}: `dimensions.threads` lists {too_many}, but a trial can have at most "
            f"{cores} core(s) here; use values 1..{cores} or `auto`"
        )
    batches = d.batch_size_gpu if device == Device.CUDA else d.batch_size
    batch = max(batches)

    def ok(**fields: Any) -> bool:
        try:
            v = Variant(**{**BASELINE_FIELDS, "batch_size": batch, **fields})
        except ConfigError:  # int8 with float layers at a precision its runtime does not draw
            return False
        return infeasible(v, device=device, fp16_native=fp16_native, bf16_native=bf16_native) is None

    precision = [p.value for p in d.precision if ok(precision=p)]
    compiles = {
        q: [c.value for c in d.compile if any(ok(quantization=q, compile=c, precision=p) for p in precision)]
        for q in COMPILE_PARAM if q is Quantization.NONE or q in d.quantization
    }  # fmt: skip
    quantization = [q.value for q in d.quantization if compiles.get(q)]
    if not quantization:
        raise SpaceError(
            f"{source}: no feasible precision/quantization is left on this hardware "
            f"(device={device}, fp16_native={fp16_native}, bf16_native={bf16_native})"
        )
    split = min((a.min_batch for a in ACCEPTS.values() if a.min_batch > 1), default=2)
    choices: dict[str, list[Any]] = {
        "quantization": quantization,
        "precision": precision,
        **{COMPILE_PARAM[q]: compiles.get(q, []) for q in COMPILE_PARAM},
        "precision_int8": list(precision),  # int8 whose layers left in float run at a drawn precision
        "batch_split": [b for b in batches if b >= split],  # a mode that splits its batch
        "batch_size": list(batches),
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
    """Optuna's define-by-run space (module docstring; module-level so that Ray can pickle it
    with `partial`). Returns the constants Ray adds to the trial's config."""
    quant = Quantization(trial.suggest_categorical("quantization", choices["quantization"]))
    compile_ = CompileMode(trial.suggest_categorical(COMPILE_PARAM[quant], choices[COMPILE_PARAM[quant]]))
    accepts = ACCEPTS[compile_]
    const: dict[str, Any] = {}
    name = _precision_param(quant, compile_)
    if name:
        trial.suggest_categorical(name, choices[name])
    else:
        const["precision"] = Precision.FP32.value
    batch = "batch_split" if accepts.min_batch > 1 else "batch_size"
    trial.suggest_categorical(batch, choices[batch])
    trial.suggest_categorical("threads", choices["threads"])
    if accepts.layouts:
        trial.suggest_categorical("layout", choices["layout"])
    else:
        const["layout"] = Layout.CONTIGUOUS.value
    return const


def _precision_param(quant: Quantization, compile_: CompileMode) -> str | None:
    """The parameter a variant's precision is drawn as, or None where it is fixed at fp32."""
    accepts = ACCEPTS[compile_]
    if quant is Quantization.NONE:
        return "precision" if accepts.float_precisions else None
    return "precision_int8" if accepts.int8_float_precision else None


def space_function(choices: dict[str, list[Any]]) -> functools.partial[dict[str, Any] | None]:
    return functools.partial(define_by_run, choices=choices)


def to_params(variant: dict[str, Any]) -> dict[str, Any]:
    """A flat variant (Variant fields) as the Optuna parameters `define_by_run` would draw
    for it: the conditional names, and no parameter for what it fixes as a constant."""
    v = variant_from_config(variant)
    accepts = ACCEPTS[v.compile]
    params: dict[str, Any] = {"quantization": v.quantization.value, COMPILE_PARAM[v.quantization]: v.compile.value}
    name = _precision_param(v.quantization, v.compile)
    if name:
        params[name] = v.precision.value
    params["batch_split" if accepts.min_batch > 1 else "batch_size"] = v.batch_size
    params["threads"] = v.threads
    if accepts.layouts:
        params["layout"] = v.layout.value
    return params


def in_space(params: dict[str, Any], choices: dict[str, list[Any]]) -> bool:
    return all(k in choices and value in choices[k] for k, value in params.items())


def all_points(choices: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the define-by-run space, as Optuna params (`to_params`), in the
    choices' order, each once."""
    names = ("quantization", "precision", "compile", "batch_size", "threads", "layout")
    compiles = list(dict.fromkeys(c for name in COMPILE_PARAM.values() for c in choices[name]))
    batches = sorted(set(choices["batch_size"]) | set(choices["batch_split"]))
    pools = [choices["quantization"], choices["precision"], compiles, batches, choices["threads"], choices["layout"]]
    points: dict[str, dict[str, Any]] = {}
    for values in itertools.product(*pools):
        flat = dict(zip(names, values, strict=True))
        if not feasible(flat):
            continue
        params = to_params(flat)
        if in_space(params, choices):
            points.setdefault(config_key(params), params)
    return list(points.values())


def baseline_point(choices: dict[str, list[Any]]) -> dict[str, Any]:
    """Trial 0 as an Optuna point: fp32, eager, batch 1, the most threads the space offers
    (all cores of a trial with `threads: auto`)."""
    return {**BASELINE_FIELDS, "batch_size": 1, "threads": max(choices["threads"])}


def feasible(config: dict[str, Any]) -> bool:
    """Whether a sampled config is a variant at all (its runtime runs it). Each value on its
    own is already feasible on this hardware: `choices` holds only those, so the hardware
    flags and the device are not asked again here: a pair that one of the devices runs is a
    variant."""
    try:
        v = variant_from_config(config)
    except ConfigError:  # e.g. int8 with bf16 on a runtime that runs its float layers in fp32
        return False
    return any(infeasible(v, device=d, fp16_native=True, bf16_native=True) is None for d in Device)
