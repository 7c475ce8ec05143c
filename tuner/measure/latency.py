"""The latency protocol (docs/architecture.md §3): warm up until settled, then time in windows
until enough iterations, enough time and k agreeing windows; cap the time in any case.

Why it is shaped like this:

* **Warm-up is separate.** The first calls pay for oneDNN primitive creation, allocator
  growth and (for compiled variants) code generation. They are reported as warm-up, never
  mixed into the timed figures. Warm-up ends when two consecutive windows agree, after a
  minimum count, so a variant that needs many calls to settle gets them.
* **Windows, not single calls.** A window closes once it holds at least `window_s` of work
  (and at least one call), so a 5 ms and a 2 s variant are both judged on comparable
  stretches of time. Each window is summarised by its median, which ignores one-off spikes.
* **Three gates to stop.** At least `min_iters` calls *and* `min_time_s` seconds, so short
  runs cannot look stable by luck; then the medians of the last `stable_windows` windows
  must agree within `tolerance` (relative spread). `max_time_s` caps the phase: a result
  that never settles is still returned, with `stable=False`, never hidden.
* **Noise control.** Garbage is collected before timing and the collector is disabled
  while timing. `sync` (e.g. `torch.cuda.synchronize`) is called after every call so that
  asynchronous devices are timed to completion.
* **On a GPU, CUDA events.** A `timer` (`cuda_event_timer`) times each call itself: events
  recorded on the stream around it, read once the end event has completed, so the figure
  is the GPU's time for that call and calls never overlap. The clock still decides when
  windows and phases end.

The clock is injected, so tests drive the algorithm exactly with a fake clock.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tuner.config.space import TimingConfig


@dataclass(frozen=True)
class LatencyResult:
    """Raw per-call times plus the summary the reports use. Never just a mean."""

    times_s: tuple[float, ...]
    window_medians_s: tuple[float, ...]
    warmup_iters: int
    warmup_s: float
    timed_wall_s: float
    stable: bool
    stable_windows: int = 3  # how many trailing windows `stable` was judged on

    def _pct_ms(self, q: float) -> float:
        return float(np.percentile(self.times_s, q)) * 1e3

    @property
    def p50_ms(self) -> float:
        return self._pct_ms(50)

    def summary(self, items_per_call: int) -> dict[str, float]:
        """Names as declared in core/schema.py. Throughput = items / wall time of the timed phase."""
        t = np.asarray(self.times_s)
        q25, q75 = np.percentile(t, [25, 75])
        return {
            "latency_p50_ms": self._pct_ms(50),
            "latency_p90_ms": self._pct_ms(90),
            "latency_p99_ms": self._pct_ms(99),
            "latency_mean_ms": float(t.mean()) * 1e3,
            "latency_std_ms": float(t.std(ddof=1) if len(t) > 1 else 0.0) * 1e3,
            "latency_iqr_ms": float(q75 - q25) * 1e3,
            "latency_n": float(len(t)),
            "latency_window_spread": _spread(list(self.window_medians_s[-self.stable_windows :])),
            "warmup_iters": float(self.warmup_iters),
            "warmup_s": self.warmup_s,
            "throughput_ips": items_per_call * len(t) / self.timed_wall_s if self.timed_wall_s > 0 else 0.0,
        }


def _spread(values: list[float]) -> float:
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid > 0 else float("inf")


CallTimer = Callable[[Callable[[], object]], float]  # runs one call, returns its time in seconds


def cuda_event_timer() -> CallTimer:
    """One call timed with CUDA events on the current stream (host waits for the end event)."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(fn: Callable[[], object]) -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3  # ms -> s

    return timed


def measure_latency(
    fn: Callable[[], object],
    cfg: TimingConfig,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] | None = None,
    timer: CallTimer | None = None,
) -> LatencyResult:
    """Time `fn()` with the protocol above. `fn` must already be built (and compiled).
    `timer`, where given, times each call (CUDA events) instead of the clock and `sync`."""

    def one_call() -> float:
        if timer is not None:
            return timer(fn)
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        return clock() - t0

    def one_window() -> list[float]:
        times: list[float] = []
        while not times or sum(times) < cfg.window_s:
            times.append(one_call())
        return times

    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        warm, warmup_s = _warm_up(one_window, cfg, clock)
        times, medians, stable, wall = _timed(one_window, cfg, clock)
    finally:
        if gc_was_enabled:
            gc.enable()
    return LatencyResult(
        times_s=tuple(times),
        window_medians_s=tuple(medians),
        warmup_iters=warm,
        warmup_s=warmup_s,
        timed_wall_s=wall,
        stable=stable,
        stable_windows=cfg.stable_windows,
    )


def _warm_up(one_window: Callable[[], list[float]], cfg: TimingConfig, clock: Callable[[], float]) -> tuple[int, float]:
    """Windows until two consecutive ones agree (after a minimum count of calls), or the cap:
    (calls, seconds)."""
    start = clock()
    calls = 0
    prev_median: float | None = None
    while True:
        w = one_window()
        calls += len(w)
        med = statistics.median(w)
        settled = prev_median is not None and _spread([prev_median, med]) <= cfg.tolerance
        if (settled and calls >= cfg.warmup_min_iters) or clock() - start >= cfg.warmup_max_s:
            return calls, clock() - start
        prev_median = med


def _timed(
    one_window: Callable[[], list[float]], cfg: TimingConfig, clock: Callable[[], float]
) -> tuple[list[float], list[float], bool, float]:
    """Windows until enough calls and time, with the last `stable_windows` medians within
    the tolerance (stable), or the time cap: (call times, window medians, stable, wall s)."""
    start = clock()
    times: list[float] = []
    medians: list[float] = []
    while True:
        w = one_window()
        times += w
        medians.append(statistics.median(w))
        elapsed = clock() - start
        if (
            len(times) >= cfg.min_iters
            and elapsed >= cfg.min_time_s
            and len(medians) >= cfg.stable_windows
            and _spread(medians[-cfg.stable_windows :]) <= cfg.tolerance
        ):
            return times, medians, True, clock() - start
        if elapsed >= cfg.max_time_s:
            return times, medians, False, clock() - start
