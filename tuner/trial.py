"""One trial: Variant -> build -> screen -> time -> accuracy -> metrics.

`evaluate()` is the whole measurement of one variant, shared by the Ray trainable
(`run_trial`, one fresh forked process per trial) and by `python -m tuner measure`.

Statuses: `ok`, `infeasible` (known not to work here; nothing built), `failed` (the build
or a run raised an expected error: its text is kept), `inaccurate` (the first batch is far
from fp32; not timed), and from `guard.fresh_process`: `failed` for any other exception
or a crash, `timeout`, `oom`. All of them keep their error text and traceback.

Ray/Optuna see `objective_*` keys: the real figures for `ok`, penalties otherwise, so the
sampler is steered *away* from broken combinations (a raised error would be a FAIL trial,
which TPE ignores and keeps re-sampling).
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.build import BuiltVariant, build
from tuner.errors import VariantUnsupported, one_line
from tuner.guard import fresh_process, inject, slowed
from tuner.hardware import detect
from tuner.measure.accuracy import accuracy_drop, fidelity, quality, topk_accuracy
from tuner.measure.ceiling import ceiling_fraction, ceiling_key
from tuner.measure.interference import sample_load
from tuner.measure.latency import LatencyResult, TimingConfig, measure_latency
from tuner.measure.memory import model_size_mb, peak_device_mb, peak_rss_mb
from tuner.models import weights_digest
from tuner.reference import Reference
from tuner.variant import Variant, infeasible_reason

OBJECTIVES = {"objective_latency_ms": "min", "objective_throughput": "max", "objective_quality": "max"}
PENALTY = {"objective_latency_ms": 1e7, "objective_throughput": 0.0, "objective_quality": 0.0}
# The figures a trial reports, in trials.csv column order (non-numeric keys are separate).
METRICS = (
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "latency_std_ms",
    "latency_iqr_ms", "latency_n", "throughput_ips", "top1_agreement", "cosine_similarity",
    "max_abs_error", "top1", "top5", "quality", "accuracy_drop", "speedup_vs_baseline",
    "latency_window_spread", "achieved_gflops", "ceiling_fraction",
    "build_s", "measure_s", "warmup_s", "warmup_iters", "peak_rss_mb", "peak_device_mb", "model_size_mb",
    "load_start", "load_end", "busy_cores_start", "busy_cores_end", "trial_wall_s", "process_wall_s",
    "mlflow_s", "nice",
)  # fmt: skip
INPUT_POOL = 4  # distinct batches cycled during timing (never one cached tensor)

# Errors a torch build/run raises for an unsupported combination (dynamo/inductor errors
# subclass RuntimeError). Anything else is our bug and propagates.
EXPECTED_ERRORS = (VariantUnsupported, RuntimeError, NotImplementedError)


@dataclass(frozen=True)
class TrialSettings:
    timing: TimingConfig
    screen_min_cosine: float = 0.9
    ceiling: dict[str, float] = field(default_factory=dict)  # GFLOP/s per precision (measure/ceiling.py)
    busy_threshold_cores: float = 0.25  # other CPU use above this flags interference
    timeout_s: float | None = None  # per-trial wall-time limit (guard.py)
    memory_mb: float | None = None  # per-trial resident-memory cap (guard.py)
    faults: tuple[Any, ...] = ()  # test-only fault injection rules (space `inject_faults:`)


def set_threads(n: int) -> None:
    """Exact intra-op threads; one inter-op thread (settable once per process, hence the
    fresh process per trial)."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process (e.g. `tuner measure` after the reference)


def _load_checked(variant: Variant, ref: Reference) -> torch.nn.Module:
    """Set this process's threads, load the model and prove it is the reference's model."""
    set_threads(variant.threads)
    module = ref.load_module()
    if weights_digest(module) != ref.digest:
        raise RuntimeError("trial loaded different weights than the reference (digest mismatch)")
    return module


def _batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split into full batches. The last one is padded by wrapping around to the first
    rows, so that compiled variants never see a new shape; callers trim the outputs."""
    n = len(x)
    idx = list(range(n)) + [i % n for i in range((-n) % batch_size)]
    return list(x[idx].split(batch_size))


def _timing_pool(x: torch.Tensor, batch_size: int, built: BuiltVariant) -> list[torch.Tensor]:
    n = len(x)
    pool = []
    for k in range(INPUT_POOL):
        idx = [(k * batch_size + i) % n for i in range(batch_size)]
        pool.append(built.prepare(x[idx]))
    return pool


def _guarded_timing(
    fn: Callable[[], object], settings: TrialSettings, sync: Callable[[], None] | None
) -> tuple[LatencyResult, dict[str, Any]]:
    """Time `fn` with the interference guard: sample other CPU use right before and right
    after timing; if the box was busy, time once more (and say whether it was still busy)."""
    remeasured = False
    while True:
        before = sample_load()
        lat = measure_latency(fn, settings.timing, sync=sync)
        after = sample_load()
        busy = max(before.busy_cores, after.busy_cores) > settings.busy_threshold_cores
        if not busy or remeasured:
            break
        remeasured = True
    return lat, {
        "busy_cores_start": before.busy_cores,
        "busy_cores_end": after.busy_cores,
        "busy_processes": " ".join(before.busy_processes + after.busy_processes),
        "interference": busy,
        "remeasured": remeasured,
    }


def _ceiling_metrics(
    variant: Variant, flops_per_item: float, throughput_ips: float, ceiling: dict[str, float]
) -> dict[str, float]:
    key = ceiling_key(variant.precision.value, variant.quantization.value)
    if not flops_per_item or key not in ceiling:
        return {}
    return {
        "achieved_gflops": flops_per_item * throughput_ips / 1e9,
        "ceiling_fraction": ceiling_fraction(flops_per_item, throughput_ips, ceiling[key]),
    }


def evaluate(variant: Variant, ref: Reference, settings: TrialSettings) -> dict[str, Any]:
    """Build and measure one variant in this process. Returns a flat result dict."""
    hw = detect()
    result: dict[str, Any] = {**variant.to_dict(), "status": "ok", "error": "", "traceback": ""}
    result["load_start"] = os.getloadavg()[0]
    reason = infeasible_reason(variant, device=hw.device, fp16_native=hw.fp16_native, bf16_native=hw.bf16_native)
    if reason:
        return {**result, "status": "infeasible", "error": reason, **PENALTY}

    model = _load_checked(variant, ref)
    x = ref.data.inputs
    try:
        built = slowed(build(model, variant, ref.data.calibration, hw.device), settings.faults, variant)
        result["build_s"] = built.build_s
        batches = _batches(x, variant.batch_size)
        with torch.inference_mode():
            first = built.run(built.prepare(batches[0]))[: min(variant.batch_size, len(x))]
            screen = fidelity(first, ref.logits[: len(first)])
            if screen["cosine_similarity"] < settings.screen_min_cosine:
                msg = f"first batch cosine {screen['cosine_similarity']:.4f} < {settings.screen_min_cosine}"
                return {**result, **screen, "status": "inaccurate", "error": msg, **PENALTY}

            pool = _timing_pool(x, variant.batch_size, built)
            cycle = itertools.cycle(pool)
            measure_start = time.perf_counter()
            lat, guard = _guarded_timing(lambda: built.run(next(cycle)), settings, built.sync)

            outs = torch.cat([built.run(built.prepare(b)).float().cpu() for b in batches])[: len(x)]
    except EXPECTED_ERRORS as e:
        return {
            **result,
            "status": "failed",
            "error": one_line(e),
            "traceback": traceback.format_exc(),
            **PENALTY,
        }

    metrics: dict[str, Any] = lat.summary(variant.batch_size)
    metrics["measure_s"] = time.perf_counter() - measure_start
    metrics.update(guard)
    metrics.update(_ceiling_metrics(variant, ref.flops_per_item, metrics["throughput_ips"], settings.ceiling))
    metrics.update(fidelity(outs, ref.logits))
    if ref.data.labels is not None:
        metrics.update(topk_accuracy(outs, ref.data.labels))
    metrics["quality"] = quality(metrics, ref.has_labels)
    metrics["accuracy_drop"] = accuracy_drop(metrics["quality"], ref.baseline_quality)
    metrics["peak_rss_mb"] = peak_rss_mb()
    device_peak = peak_device_mb()
    if device_peak is not None:
        metrics["peak_device_mb"] = device_peak
    metrics["model_size_mb"] = model_size_mb(built.module)
    metrics["load_end"] = os.getloadavg()[0]
    return {**result, **metrics, "stable": lat.stable, **objectives(metrics)}


def objectives(figures: dict[str, Any]) -> dict[str, float]:
    """What the sampler optimises (OBJECTIVES), from an ok trial's figures."""
    return {
        "objective_latency_ms": float(figures["latency_p90_ms"]),
        "objective_throughput": float(figures["throughput_ips"]),
        "objective_quality": float(figures["quality"]),
    }


def time_variant(variant: Variant, ref: Reference, settings: TrialSettings) -> dict[str, Any]:
    """Build and time one variant (no accuracy pass): one confirmation measurement.
    Returns the raw per-call times so the caller can pool processes."""
    built = build(_load_checked(variant, ref), variant, ref.data.calibration, detect().device)
    built = slowed(built, settings.faults, variant)
    cycle = itertools.cycle(_timing_pool(ref.data.inputs, variant.batch_size, built))
    with torch.inference_mode():
        lat, guard = _guarded_timing(lambda: built.run(next(cycle)), settings, built.sync)
    return {"times_s": list(lat.times_s), "stable": lat.stable, **guard}


def run_trial(config: dict[str, Any], reference: Reference, settings: TrialSettings) -> None:
    """The Ray Tune function trainable (wrapped with `tune.with_parameters`). The actor is
    reused from trial to trial; each trial is built and measured in its own fresh process
    (guard.fresh_process), which also turns crashes, hangs and memory blow-ups into results."""
    from ray import tune

    from tuner.space import variant_from_config

    started = time.perf_counter()
    variant = variant_from_config(config)
    out = fresh_process(
        _trial_body,
        (variant, reference, settings),
        tune.get_context().get_trial_dir(),
        settings.timeout_s,
        settings.memory_mb,
    )
    if "objective_latency_ms" not in out:  # the process raised or died: a result all the same
        out = {**variant.to_dict(), "status": "failed", **out, **PENALTY}
    out["trial_wall_s"] = time.perf_counter() - started
    tune.report(out)


def _trial_body(variant: Variant, reference: Reference, settings: TrialSettings) -> dict[str, Any]:
    """What a trial's fresh process runs."""
    inject(list(settings.faults), variant.to_dict())
    return evaluate(variant, reference, settings)
