"""One trial: Variant -> build -> screen -> time -> accuracy -> metrics.

`evaluate()` is the whole measurement of one variant, shared by the Ray trainable
(`search/tune.py`, one fresh forked process per trial) and by `python -m tuner measure`.
It returns a `TrialResult` (core/schema.py) with one of its statuses: `ok`, `infeasible`
(known not to work here; nothing built), `failed` (a runtime refused the variant while
building or running it, `refused`: its text is kept), `inaccurate` (the first batch is far
from fp32; not timed). Any other exception propagates: the fresh process records it as
`error` (most likely tuner's own bug), and adds `failed` for a crash, `timeout` and `oom`.

`time_variant()` is one confirmation measurement: build and time, no accuracy pass.
"""

from __future__ import annotations

import itertools
import linecache
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tuner.build import BuiltVariant, build, infeasible
from tuner.build.runtime import full_batches
from tuner.config.space import TimingConfig
from tuner.core.env import pin_threads
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.schema import TrialResult, TrialStatus
from tuner.core.variant import Device, MachineProbe, Variant, ceiling_key
from tuner.inputs.models import weights_digest
from tuner.inputs.reference import Reference
from tuner.measure.accuracy import accuracy_drop, fidelity, quality, topk_accuracy
from tuner.measure.ceiling import ceiling_fraction, probe_kernel
from tuner.measure.hardware import Hardware, detect
from tuner.measure.interference import sample_load
from tuner.measure.latency import CallTimer, LatencyResult, cuda_event_timer, measure_latency
from tuner.measure.memory import model_size_mb, peak_device_mb, peak_rss_mb
from tuner.trial.faults import slow_call, slowed

INPUT_POOL = 4  # distinct batches cycled during timing (never one cached tensor)

# What the runtimes raise for an operator, dtype or graph they cannot build or run: torch's
# RuntimeError (ATen; dynamo, inductor, export and the ONNX exporter subclass it) and
# NotImplementedError (a kernel missing for a dtype or backend), OpenVINO's RuntimeError,
# ONNX Runtime's errors (RuntimeError subclasses). build/ raises VariantUnsupported itself.
RUNTIME_ERRORS = (RuntimeError, NotImplementedError)
TUNER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def refused(e: BaseException) -> bool:
    """Did a runtime refuse the variant (`failed`), rather than tuner break (`error`)? Yes
    for VariantUnsupported, and for RUNTIME_ERRORS unless a `raise` statement in tuner's own
    code threw it: those are ours. A runtime's error raised in C++ below a call of ours
    counts as the runtime's (its innermost Python frame is our call, not a `raise`)."""
    if isinstance(e, VariantUnsupported):
        return True
    if not isinstance(e, RUNTIME_ERRORS):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return True
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    line = linecache.getline(path, tb.tb_lineno).strip()
    return not (path.startswith(TUNER_DIR + os.sep) and line.startswith("raise"))


@dataclass(frozen=True)
class TrialSettings:
    timing: TimingConfig
    screen_min_cosine: float = 0.9
    ceiling: dict[str, float] = field(default_factory=dict)  # GFLOP/s per precision (measure/ceiling.py)
    busy_threshold_cores: float = 0.25  # other CPU use above this flags interference
    timeout_s: float | None = None  # per-trial wall-time limit (trial/process.py)
    memory_mb: float | None = None  # per-trial resident-memory cap (trial/process.py)
    faults: tuple[Any, ...] = ()  # test-only fault injection rules (space `inject_faults:`)
    cores: int = 0  # the CPUs a trial reserves: a whole node of the search's class (0: not on Ray)
    device: Device | None = None  # search --device; None: cuda where this process sees a GPU

    def hardware(self) -> Hardware:
        """This process's hardware as the trial uses it: on `cpu`, without its GPU (Ray leaves a
        node's GPUs visible to a task that reserved none, so the device is said, not inferred)."""
        return detect().for_device(self.device)


def _load_checked(variant: Variant, ref: Reference) -> torch.nn.Module:
    """Set this process's threads, load the model and prove it is the reference's model."""
    pin_threads(variant.threads)
    module = ref.load_module()
    if weights_digest(module) != ref.digest:
        raise RuntimeError("trial loaded different weights than the reference (digest mismatch)")
    return module


def _timing_pool(x: torch.Tensor, batch_size: int, built: BuiltVariant) -> list[torch.Tensor]:
    n = len(x)
    pool = []
    for k in range(INPUT_POOL):
        idx = [(k * batch_size + i) % n for i in range(batch_size)]
        pool.append(built.prepare(x[idx]))
    return pool


def _timer(device: str) -> CallTimer | None:
    """Each call on a GPU is timed with CUDA events (measure/latency.py); on the CPU, the clock."""
    return cuda_event_timer() if device == Device.CUDA else None


def _guarded_timing(
    fn: Callable[[], object], settings: TrialSettings, timer: CallTimer | None
) -> tuple[LatencyResult, dict[str, Any]]:
    """Time `fn` with the interference guard: sample other CPU use right before and right
    after timing; if the box was busy, time once more (and say whether it was still busy)."""
    remeasured = False
    while True:
        before = sample_load(settings.timing.load_sample_s)
        lat = measure_latency(fn, settings.timing, timer=timer)
        after = sample_load(settings.timing.load_sample_s)
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


STREAM_WINDOWS = 3  # windows of `timing.min_time_s` each


def _stream_rates(built: BuiltVariant, batches: Iterator[torch.Tensor], settings: TrialSettings) -> list[float]:
    """Items/s of each of STREAM_WINDOWS windows in which the calls are issued back to back
    (build/runtime.py `Stream`), right after the latency timing; [] for a runtime that runs
    one call at a time, whose stream is its closed loop (`stream_ips` = `throughput_ips`)."""
    if built.stream is None:
        return []
    return [built.stream(batches, settings.timing.min_time_s) for _ in range(STREAM_WINDOWS)]


def _ceiling_figures(
    variant: Variant, flops_per_item: float, throughput_ips: float, ceiling: dict[str, float]
) -> dict[str, float]:
    if not flops_per_item:
        return {}
    achieved = {"achieved_gflops": flops_per_item * throughput_ips / 1e9}  # also when no ceiling is known
    key = ceiling_key(variant.precision.value, variant.quantization.value)
    if key not in ceiling:
        return achieved
    return {
        **achieved,
        "ceiling_fraction": ceiling_fraction(flops_per_item, throughput_ips, ceiling[key]),
        "ceiling_gflops": ceiling[key],
    }


def evaluate(
    variant: Variant,
    ref: Reference,
    settings: TrialSettings,
    builder: Callable[[torch.nn.Module], BuiltVariant] | None = None,
) -> TrialResult:
    """Build and measure one variant in this process. `builder` replaces `build()`: e.g.
    `measure --model-uri` measures a registered model's own artifact under this protocol."""
    hw = settings.hardware()
    load_start = os.getloadavg()[0]
    reason = infeasible(variant, device=hw.device, fp16_native=hw.fp16_native, bf16_native=hw.bf16_native)
    if reason:
        return TrialResult(status=TrialStatus.INFEASIBLE, error=reason, load_start=load_start)

    model = _load_checked(variant, ref)
    x = ref.data.inputs
    build_s = None
    try:
        made = builder(model) if builder is not None else build(model, variant, ref.data.calibration, hw.device)
        built = slowed(made, settings.faults, variant)
        build_s = built.build_s
        batches = full_batches(x, variant.batch_size)
        with torch.inference_mode():
            first = built.run(built.prepare(batches[0]))[: min(variant.batch_size, len(x))]
            screen = fidelity(first, ref.logits[: len(first)])
            if screen["cosine_similarity"] < settings.screen_min_cosine:
                msg = f"first batch cosine {screen['cosine_similarity']:.4f} < {settings.screen_min_cosine}"
                return TrialResult.of(
                    screen, status=TrialStatus.INACCURATE, error=msg, load_start=load_start, build_s=build_s
                )

            pool = _timing_pool(x, variant.batch_size, built)
            cycle = itertools.cycle(pool)
            measure_start = time.perf_counter()
            lat, guard = _guarded_timing(lambda: built.run(next(cycle)), settings, _timer(built.device.type))
            stream = _stream_rates(built, cycle, settings)

            outs = torch.cat([built.run(built.prepare(b)).float().cpu() for b in batches])[: len(x)]
    except (VariantUnsupported, *RUNTIME_ERRORS) as e:
        if not refused(e):
            raise
        return TrialResult(
            status=TrialStatus.FAILED,
            error=one_line(e),
            traceback=traceback.format_exc(),
            load_start=load_start,
            build_s=build_s,
        )

    figures: dict[str, Any] = lat.summary(variant.batch_size)
    figures["stream_ips"] = statistics.fmean(stream) if stream else figures["throughput_ips"]
    figures["measure_s"] = time.perf_counter() - measure_start
    figures.update(_ceiling_figures(variant, ref.flops_per_item, figures["throughput_ips"], settings.ceiling))
    figures.update(fidelity(outs, ref.logits))
    if ref.data.labels is not None:
        figures.update(topk_accuracy(outs, ref.data.labels))
    figures["quality"] = quality(figures, ref.has_labels)
    figures["accuracy_drop"] = accuracy_drop(figures["quality"], ref.baseline_quality)
    figures["peak_device_mb"] = peak_device_mb() if hw.device is Device.CUDA else None
    figures.update(built.figures)
    figures.update(
        load_start=load_start,
        build_s=build_s,
        peak_rss_mb=peak_rss_mb(),
        model_size_mb=built.size_mb if built.size_mb is not None else model_size_mb(built.module),
        load_end=os.getloadavg()[0],
    )
    return TrialResult.of({**guard, **figures}, status=TrialStatus.OK, stable=lat.stable)


def time_probe(probe: MachineProbe, settings: TrialSettings) -> dict[str, Any]:
    """One confirmation measurement of the machine probe (the nightly check's reference for
    the machine's speed): its kernel timed with the same protocol, in this fresh process."""
    pin_threads(probe.threads)
    device = settings.hardware().device
    name, fn, flops = probe_kernel(probe.precision, device)
    call = slow_call(fn, settings.faults, probe.to_dict())
    with torch.inference_mode():
        lat, guard = _guarded_timing(call, settings, _timer(device))
    return {"times_s": list(lat.times_s), "stable": lat.stable, "probe": name, "probe_flops": flops, **guard}


def time_variant(variant: Variant, ref: Reference, settings: TrialSettings) -> dict[str, Any]:
    """Build and time one variant (no accuracy pass): one confirmation measurement.
    Returns the raw per-call times so the caller can pool processes."""
    built = build(_load_checked(variant, ref), variant, ref.data.calibration, settings.hardware().device)
    built = slowed(built, settings.faults, variant)
    cycle = itertools.cycle(_timing_pool(ref.data.inputs, variant.batch_size, built))
    with torch.inference_mode():
        lat, guard = _guarded_timing(lambda: built.run(next(cycle)), settings, _timer(built.device.type))
        stream = _stream_rates(built, cycle, settings)
    return {"times_s": list(lat.times_s), "stream_rates": stream, "stable": lat.stable, **guard}
