"""`evaluate()`: one variant built and measured in this process, with every status."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tuner.config.space import TimingConfig
from tuner.core.errors import VariantUnsupported
from tuner.core.schema import METRICS, PENALTY
from tuner.core.variant import Variant
from tuner.inputs.models import ModelSpec
from tuner.inputs.reference import prepare_reference
from tuner.measure.hardware import detect
from tuner.measure.interference import LoadSample
from tuner.trial.evaluate import TrialSettings, evaluate, time_variant

from conftest import FAST_TIMING

SETTINGS = TrialSettings(TimingConfig(**FAST_TIMING))
HW = detect()


def test_ok_trial_reports_every_metric(small_reference):
    out = evaluate(Variant(batch_size=2, threads=1), small_reference, SETTINGS)
    assert out.status == "ok", out.error
    for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput_ips", "top1_agreement",
              "cosine_similarity", "max_abs_error", "quality", "accuracy_drop", "build_s", "peak_rss_mb",
              "model_size_mb"):  # fmt: skip
        assert k in METRICS and math.isfinite(getattr(out, k)) and getattr(out, k) >= 0, k
    assert out.latency_p50_ms <= out.latency_p90_ms <= out.latency_p99_ms
    assert out.top1_agreement == 1.0 and out.cosine_similarity > 0.9999
    assert out.accuracy_drop == 0.0
    assert out.report()["objective_latency_p90_ms"] == out.latency_p90_ms


def test_int8_trial_is_close_to_fp32(small_reference):
    out = evaluate(Variant(quantization="static_int8", batch_size=4, threads=1), small_reference, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "ok", out.error
    assert out.cosine_similarity > 0.98


def test_infeasible_trial_is_not_built(small_reference):
    # ONNX Runtime has no bf16 on the CPU: infeasible on every host, whatever it supports.
    out = evaluate(Variant(precision="bf16", compile="onnxruntime"), small_reference, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "infeasible" and "bf16" in out.error
    assert out.objectives() == PENALTY
    assert out.latency_p50_ms is None and out.build_s is None


@pytest.mark.skipif(HW.fp16_native, reason="this host runs fp16 natively (avx512_fp16/amx_fp16 or CUDA)")
def test_fp16_is_infeasible_where_it_is_not_native(small_reference):
    out = evaluate(Variant(precision="fp16"), small_reference, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "infeasible" and "fp16 is not native" in out.error
    assert out.objectives() == PENALTY and out.latency_p50_ms is None


def test_bf16_is_infeasible_on_an_avx2_only_host(small_reference, monkeypatch):
    """A Zen 3 host (AVX2, no avx512_bf16): bf16 is marked infeasible, not built or timed.
    Simulated on whatever host runs the test by the capabilities evaluate() reads."""
    avx2 = dataclasses.replace(HW, isa="avx2,fma", gpu="none")
    assert not avx2.bf16_native and not avx2.fp16_native
    monkeypatch.setattr("tuner.trial.evaluate.detect", lambda: avx2)
    out = evaluate(Variant(precision="bf16", threads=1), small_reference, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "infeasible" and "bf16 is not native" in out.error
    assert out.objectives() == PENALTY and out.latency_p50_ms is None
    # The same host runs fp32 and int8 variants: those are what the suite measures there.
    assert evaluate(Variant(quantization="dynamic_int8", threads=1), small_reference, SETTINGS).status == "ok"  # type: ignore[arg-type]


def test_factory_model_weights_are_labelled_as_the_factory_built_them():
    from tuner.inputs.models import load_model, resolve_weights

    spec = resolve_weights(ModelSpec("tiny_models:small_cnn", "auto", 0))
    assert spec.weights == "factory" and resolve_weights(spec) == spec  # as read back by `measure`
    assert load_model(spec).weights_label == "as built by tiny_models:small_cnn (torch seed 0)"


def test_failed_build_is_recorded_with_its_error():
    ref = prepare_reference(ModelSpec("tiny_models:untraceable", "random", 0), input_size=32, n_eval=4, n_calib=2)
    out = evaluate(Variant(quantization="static_int8"), ref, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "failed"
    assert out.error.startswith("VariantUnsupported: FX static quantization")
    assert "Traceback" in out.traceback
    assert out.objectives()["objective_stream_ips"] == 0.0


def test_a_runtimes_error_is_failed_and_a_raise_of_tuners_own_propagates(small_reference):
    from tuner.trial.evaluate import refused
    from tuner.trial.faults import inject

    def runtime_refuses(model: torch.nn.Module) -> Any:
        return torch.ones(2, 3) @ torch.ones(2, 3)  # ATen's RuntimeError (a shape it cannot multiply)

    out = evaluate(Variant(), small_reference, SETTINGS, builder=runtime_refuses)
    assert out.status == "failed" and "RuntimeError" in out.error and "cannot be multiplied" in out.error

    def tuner_raises(model: torch.nn.Module) -> Any:  # a `raise RuntimeError` in tuner's own code
        inject([SimpleNamespace(action="raise", when={})], {})

    with pytest.raises(RuntimeError, match="injected fault") as raised:
        evaluate(Variant(), small_reference, SETTINGS, builder=tuner_raises)
    assert not refused(raised.value) and not refused(ValueError("a bug of ours"))
    assert refused(VariantUnsupported("no int8 kernel here"))


def test_inaccurate_variant_is_screened_before_timing(small_reference):
    strict = TrialSettings(TimingConfig(**FAST_TIMING), screen_min_cosine=1.01)  # nothing can pass
    # A variant every host runs (fp32 torchscript): the screen is what is tested, not bf16.
    out = evaluate(Variant(compile="torchscript", batch_size=2), small_reference, strict)  # type: ignore[arg-type]
    assert out.status == "inaccurate" and "cosine" in out.error
    assert out.cosine_similarity is not None and out.cosine_similarity > 0.99  # close, but below 1.01
    assert out.latency_p50_ms is None and out.objectives() == PENALTY


def test_eval_set_not_a_multiple_of_the_batch(small_reference):
    # 8 eval samples, batch 3: the last batch is padded and trimmed; agreement stays exact.
    out = evaluate(Variant(batch_size=3, threads=1, compile="torchscript"), small_reference, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "ok" and out.top1_agreement == 1.0


def test_the_load_sample_length_is_the_timing_config_s(small_reference, monkeypatch):
    """The interference guard samples the load for `timing.load_sample_s` (0.5 s by default,
    shortened by the tests) right before and right after each timing, in a trial and in a
    confirmation measurement alike."""
    asked = []

    def quiet_box(seconds):
        asked.append(seconds)
        return LoadSample(0.0, (), 0.0)  # an idle machine: no re-measurement

    monkeypatch.setattr("tuner.trial.evaluate.sample_load", quiet_box)
    settings = TrialSettings(TimingConfig(**{**FAST_TIMING, "load_sample_s": 0.0123}))
    out = evaluate(Variant(threads=1), small_reference, settings)
    assert out.status == "ok", out.error
    assert asked == [0.0123, 0.0123] and out.interference is False and out.remeasured is False
    asked.clear()
    timed = time_variant(Variant(threads=1), small_reference, settings)
    assert asked == [0.0123, 0.0123] and len(timed["times_s"]) >= FAST_TIMING["min_iters"]
    assert TimingConfig().load_sample_s == 0.5  # the default a real search uses
    assert SETTINGS.timing.load_sample_s == FAST_TIMING["load_sample_s"] == 0.05  # what the tests use


def test_a_busy_box_is_timed_once_more_with_the_same_sample_length(small_reference, monkeypatch):
    asked = []

    def busy_box(seconds):
        asked.append(seconds)
        return LoadSample(1.5, ("spinner(1):1.50",), 1.0)  # another process uses 1.5 cores

    monkeypatch.setattr("tuner.trial.evaluate.sample_load", busy_box)
    settings = TrialSettings(TimingConfig(**{**FAST_TIMING, "load_sample_s": 0.0321}))
    out = evaluate(Variant(threads=1), small_reference, settings)
    assert out.status == "ok", out.error
    assert asked == [0.0321] * 4  # before and after the first timing, then the re-measurement
    assert out.interference is True and out.remeasured is True and "spinner(1)" in out.busy_processes


def test_a_trial_told_cpu_uses_the_cpu_s_hardware_even_where_a_gpu_is_visible():
    """Ray 2.60 leaves a node's GPUs visible to a trial that reserved none: `--device cpu` is
    passed down, and the trial takes the machine without its GPU (fingerprint, natives)."""
    from tuner.measure.hardware import detect

    told = TrialSettings(TimingConfig(**FAST_TIMING), device="cpu").hardware()
    assert told.device == "cpu" and told.gpu == "none" and told.fingerprint == detect().without_gpu().fingerprint
    assert TrialSettings(TimingConfig(**FAST_TIMING)).hardware() == detect()  # unsaid: what this process sees
