"""The conditional space is derived from one table, each runtime's declaration of what it runs
(tuner.build.ACCEPTS, declared in its build module): the feasible choices, the Optuna
define-by-run space and its inverse all follow a change made there, and nowhere else."""

from __future__ import annotations

from typing import Any

import pytest

import tuner.build
from tuner.build import ACCEPTS, infeasible
from tuner.config.space import SearchSpace
from tuner.core.variant import Accepts, CompileMode, Variant, config_key, variant_from_config
from tuner.search.choices import all_points, define_by_run, feasible, feasible_choices, to_params

CPU = dict(cores=2, device="cpu", fp16_native=False, bf16_native=True)


class Replay:
    """An Optuna trial that answers each parameter from `params` and records what was asked."""

    def __init__(self, params: dict[str, Any]):
        self.params, self.asked = params, []

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        assert self.params[name] in choices, (name, self.params[name], choices)
        self.asked.append(name)
        return self.params[name]


def test_every_compile_mode_declares_what_it_runs():
    assert set(ACCEPTS) == set(CompileMode)
    assert all(isinstance(a, Accepts) for a in ACCEPTS.values())


def test_define_by_run_and_to_params_are_inverses_over_the_whole_space():
    choices = feasible_choices(SearchSpace(), **CPU)
    points = all_points(choices)
    assert len(points) > 100
    for params in points:
        trial = Replay(params)
        const = define_by_run(trial, choices) or {}
        assert sorted(trial.asked) == sorted(params), params  # it draws exactly these parameters
        variant = variant_from_config({**params, **const})
        assert to_params(variant.to_dict()) == params
        assert infeasible(variant, **{k: v for k, v in CPU.items() if k != "cores"}) is None


def test_a_runtimes_declaration_is_the_one_place_that_shapes_the_space(monkeypatch):
    """ONNX Runtime declared as running bf16 and channels-last: every derived part follows."""
    ort_bf16_cl = {"precision": "bf16", "compile": "onnxruntime", "layout": "channels_last", "batch_size": 1,
                   "threads": 2, "quantization": "none"}  # fmt: skip
    label = Variant.from_dict(ort_bf16_cl).label
    choices = feasible_choices(SearchSpace(), **CPU)
    assert not feasible(ort_bf16_cl) and label not in {config_key(p) for p in all_points(choices)}
    reason = infeasible(Variant.from_dict(ort_bf16_cl), fp16_native=False, bf16_native=True)
    assert "no bf16/fp16 kernels" in (reason or "")
    assert to_params(ort_bf16_cl | {"precision": "fp32", "layout": "contiguous"}).keys() == {
        "quantization", "compile", "batch_size", "threads"}  # fmt: skip
    assert label not in _sampled(choices, ort_bf16_cl, n=500)

    monkeypatch.setitem(tuner.build.ACCEPTS, CompileMode.ONNXRUNTIME, Accepts())  # the one change
    choices = feasible_choices(SearchSpace(), **CPU)
    assert feasible(ort_bf16_cl) and label in {config_key(p) for p in all_points(choices)}
    params = to_params(ort_bf16_cl)
    assert params == {"quantization": "none", "compile": "onnxruntime", "precision": "bf16", "batch_size": 1,
                      "threads": 2, "layout": "channels_last"}  # fmt: skip
    trial = Replay(params)
    assert define_by_run(trial, choices) == {} and set(trial.asked) == set(params)
    assert label in _sampled(choices, ort_bf16_cl)  # and Optuna draws it


def _sampled(choices: dict[str, list[Any]], wanted: dict[str, Any], n: int = 3000) -> set[str]:
    """Labels an Optuna RandomSampler draws through define_by_run, until `wanted` or `n` draws."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    labels: set[str] = set()
    target = Variant.from_dict(wanted).label
    for _ in range(n):
        trial = study.ask()
        const = define_by_run(trial, choices) or {}
        labels.add(variant_from_config({**trial.params, **const}).label)
        study.tell(trial, 0.0)
        if target in labels:
            break
    return labels


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"compile": "openvino", "quantization": "dynamic_int8"}, "no dynamic int8"),
        ({"compile": "openvino_throughput", "batch_size": 1}, "splits a batch"),
        ({"compile": "inductor_max_autotune", "quantization": "dynamic_int8"}, "max-autotune aborts"),
        ({"compile": "openvino", "layout": "channels_last"}, "takes NCHW input"),
    ],
)
def test_a_variant_outside_its_runtimes_declaration_is_infeasible_with_the_declared_reason(fields, reason):
    v = Variant.from_dict({"batch_size": 2, **fields})
    assert reason in (infeasible(v, fp16_native=True, bf16_native=True) or "")
