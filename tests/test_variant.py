"""The Variant dataclass: validation, labels, feasibility rules."""

from __future__ import annotations

import pytest

from tuner.build import infeasible
from tuner.core.errors import ConfigError
from tuner.core.variant import CompileMode, Precision, Variant, baseline, unavailable_runtimes


def test_round_trip_and_label():
    v = Variant.from_dict({"quantization": "static_int8", "batch_size": 8, "threads": 2, "compile": "torchscript",
                           "layout": "channels_last"})  # fmt: skip
    assert v.label == "int8-static bs8 t2 torchscript cl"
    assert Variant.from_dict(v.to_dict()) == v
    assert baseline(2).label == "fp32 bs1 t2 eager nchw"


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"precision": "fp8"}, "`precision` must be one of fp32, tf32, bf16, fp16"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1"),
        ({"threads": "2"}, "`threads` must be an integer >= 1"),
        ({"quantization": "static_int8", "precision": "bf16"}, "must be fp32 when `quantization` is static_int8 and"),
        ({"colour": "red"}, "unknown variant key"),
    ],
)
def test_invalid_variants_say_what_is_allowed(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Variant.from_dict(params)


def test_feasibility_rules():
    assert infeasible(Variant(precision=Precision.FP16), fp16_native=False, bf16_native=True)
    assert infeasible(Variant(precision=Precision.FP16), fp16_native=True, bf16_native=True) is None
    int8_inductor = Variant(quantization="static_int8", compile=CompileMode.INDUCTOR)  # type: ignore[arg-type]
    assert infeasible(int8_inductor, fp16_native=True, bf16_native=True) is None  # PT2E
    pairs = {  # what a runtime cannot do, whatever the hardware
        "ONNX Runtime's CPU execution provider has no bf16": dict(compile="onnxruntime", precision="bf16"),
        "takes NCHW input": dict(compile="openvino", layout="channels_last"),
        "OpenVINO has no dynamic int8": dict(compile="openvino", quantization="dynamic_int8"),
        "batch 1 has nothing to split": dict(compile="openvino_throughput", batch_size=1),
    }
    for reason, params in pairs.items():
        assert reason in (infeasible(Variant(**params), fp16_native=True, bf16_native=True) or ""), params
    ok = Variant(compile="openvino_throughput", quantization="static_int8", batch_size=8)  # type: ignore[arg-type]
    assert infeasible(ok, fp16_native=True, bf16_native=True) is None
    int8_gpu = Variant(quantization="dynamic_int8")  # type: ignore[arg-type]
    assert infeasible(int8_gpu, device="cuda", fp16_native=True, bf16_native=True)
    graphs = Variant(precision="fp16", compile="inductor_reduce_overhead", batch_size=8)  # type: ignore[arg-type]
    assert "CUDA graphs: a GPU only" in (infeasible(graphs, fp16_native=True, bf16_native=True) or "")
    assert infeasible(graphs, device="cuda", fp16_native=True, bf16_native=True) is None
    assert graphs.label == "fp16 bs8 t1 inductor-ro nchw"
    tf32 = Variant(precision="tf32")  # type: ignore[arg-type]
    assert "tf32 is a GPU tensor-core mode" in (infeasible(tf32, fp16_native=True, bf16_native=True) or "")
    assert infeasible(tf32, device="cuda", fp16_native=True, bf16_native=True) is None
    assert infeasible(tf32, device="cuda", fp16_native=True, bf16_native=False)  # before Ampere


def test_the_sampler_takes_a_pair_that_either_device_runs():
    from tuner.search.choices import feasible

    base = {"precision": "fp16", "quantization": "none", "batch_size": 8, "threads": 1, "layout": "contiguous"}
    assert feasible({**base, "compile": "inductor_reduce_overhead"})  # only on a GPU, whose choices hold it
    assert feasible({**base, "compile": "openvino", "layout": "contiguous"})  # only on the CPU
    assert not feasible({**base, "compile": "inductor_reduce_overhead", "quantization": "static_int8",
                         "precision": "fp32"})  # neither device: int8 is CPU only, CUDA graphs GPU only  # fmt: skip


def test_complexity_orders_simpler_first():
    eager = Variant()
    ts_int8 = Variant(quantization="static_int8", compile="torchscript")  # type: ignore[arg-type]
    bf16 = Variant(precision="bf16")  # type: ignore[arg-type]
    assert sorted([ts_int8, bf16, eager], key=lambda v: v.complexity) == [eager, bf16, ts_int8]


def test_a_runtime_whose_package_is_missing_is_dropped_with_the_install_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    dropped = unavailable_runtimes(list(CompileMode))
    assert dropped == {"openvino + int8": "`pip install nncf`", "openvino_throughput + int8": "`pip install nncf`"}
    int8 = Variant(compile="openvino", quantization="static_int8")  # type: ignore[arg-type]
    reason = infeasible(int8, fp16_native=False, bf16_native=False)
    assert reason is not None and "nncf not installed: `pip install nncf`" in reason
    assert infeasible(Variant(compile="openvino"), fp16_native=False, bf16_native=False) is None  # type: ignore[arg-type]


def test_openvino_int8_may_run_its_float_layers_in_bf16():
    v = Variant(quantization="static_int8", precision="bf16", compile="openvino")  # type: ignore[arg-type]
    assert v.label == "int8-static+bf16 bs1 t1 ov nchw"
    assert infeasible(v, fp16_native=False, bf16_native=True) is None
    assert "bf16 is not native" in (infeasible(v, fp16_native=False, bf16_native=False) or "")
