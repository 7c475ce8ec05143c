"""The timing protocol, driven exactly by a fake clock (no real time passes)."""

from __future__ import annotations

import itertools
import math

import pytest

from tuner.config.space import TimingConfig
from tuner.measure.latency import measure_latency


class FakeClock:
    """`fn()` advances the clock by the next duration; the protocol reads it."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def fn(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


CFG = TimingConfig(
    warmup_min_iters=3, warmup_max_s=5, window_s=0.1, min_iters=10, min_time_s=1.0, max_time_s=4.0,
    stable_windows=3, tolerance=0.05,
)  # fmt: skip


def test_settled_stops_after_min_time_and_agreeing_windows():
    fc = FakeClock(itertools.repeat(0.01))
    r = measure_latency(fc.fn, CFG, clock=fc.clock)
    assert r.stable
    assert r.p50_ms == pytest.approx(10.0)
    # Stops as soon as min_time (1 s) is reached with agreeing windows: ~100 calls, not 400.
    assert 1.0 <= r.timed_wall_s < 1.2
    assert len(r.times_s) >= CFG.min_iters
    s = r.summary(items_per_call=4)
    assert s["throughput_ips"] == pytest.approx(400.0, rel=0.01)
    assert s["latency_iqr_ms"] == pytest.approx(0.0, abs=1e-9)


def test_warmup_is_excluded_from_timed_figures():
    # A slow first call (compilation), a few settling calls, then steady 10 ms.
    fc = FakeClock(itertools.chain([2.0, 0.3, 0.1, 0.05, 0.02], itertools.repeat(0.01)))
    r = measure_latency(fc.fn, CFG, clock=fc.clock)
    assert r.warmup_iters >= 5
    assert max(r.times_s) == pytest.approx(0.01)
    assert r.stable


def test_never_settles_is_reported_unstable_at_the_cap():
    # Bimodal: windows (1/8 s) alternate between 1/64 s calls and 1/16 s calls (binary
    # fractions keep the fake clock exact); every three windows hold both modes.
    pattern = itertools.cycle([1 / 64] * 8 + [1 / 16] * 2)
    fc = FakeClock(pattern)
    r = measure_latency(fc.fn, CFG.model_copy(update={"window_s": 0.125}), clock=fc.clock)
    assert not r.stable
    assert r.timed_wall_s >= CFG.max_time_s
    assert r.summary(1)["latency_p99_ms"] > r.summary(1)["latency_p50_ms"]


def test_drifting_latency_is_unstable():
    # Latency grows 3% per 0.1 s of work (a throttling-like drift): windows never agree.
    class Drift(FakeClock):
        def fn(self) -> None:
            self.calls += 1
            self.now += 0.01 * math.exp(0.3 * self.now)

    fc = Drift([])
    r = measure_latency(fc.fn, CFG, clock=fc.clock)
    assert not r.stable
    assert r.window_medians_s[-1] > r.window_medians_s[0] * 1.2


def test_min_iters_gate_holds_for_slow_calls():
    # 0.5 s per call: min_time is reached after 2 calls but min_iters needs 10.
    fc = FakeClock(itertools.repeat(0.5))
    cfg = CFG.model_copy(update={"max_time_s": 20.0})
    r = measure_latency(fc.fn, cfg, clock=fc.clock)
    assert r.stable and len(r.times_s) >= 10


def test_sync_is_called_after_every_call():
    fc = FakeClock(itertools.repeat(0.01))
    synced = []
    measure_latency(fc.fn, CFG, clock=fc.clock, sync=lambda: synced.append(1))
    assert len(synced) == fc.calls


def test_a_call_timer_gives_the_per_call_times_and_the_clock_still_ends_the_phases():
    """On a GPU each call is timed by CUDA events (`cuda_event_timer`): the protocol takes the
    timer's figure for each call, never the host clock's, while the clock bounds the phases."""
    fc = FakeClock(itertools.repeat(0.01))  # the host's view: 10 ms per call

    def timer(fn):
        fn()
        return 0.004  # the device's view: 4 ms of GPU time

    r = measure_latency(fc.fn, CFG, clock=fc.clock, timer=timer)
    assert r.p50_ms == pytest.approx(4.0) and r.stable
    assert r.timed_wall_s >= CFG.min_time_s  # the clock decided when to stop
