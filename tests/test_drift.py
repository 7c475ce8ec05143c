"""The nightly check's relative judgement (nightly/drift.py), on hand-made per-call times:
a slower machine is drift and never a regression; a slower champion is a regression."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.config.space import ServingSettings
from tuner.decide.confirm import Confirmed
from tuner.nightly.drift import Measured, judge_normalised, machine_drift
from tuner.nightly.served import comparable, judge_served, served_figures
from tuner.nightly.verdict import Judgement

RNG = np.random.default_rng(0)
PROBE_FLOPS = 2.0 * 1024**3  # one 1024x1024 GEMM
FLOPS_PER_ITEM = 4.1e9  # resnet50


def _times(ms: float, speed: list[float], n: int = 40) -> Confirmed:
    """Per-call times (s) of one thing over rounds; `speed[r]` scales round r (a slow phase)."""
    rounds = tuple(tuple(ms / 1e3 * s * (1 + 0.01 * RNG.standard_normal(n))) for s in speed)
    return Confirmed(rounds, 1, tuple(range(len(speed))))


def _check(champion_ms: float, baseline_ms: float, probe_ms: float, speed: list[float]) -> Measured:
    return Measured(_times(champion_ms, speed), _times(baseline_ms, speed), _times(probe_ms, speed),
                    PROBE_FLOPS, FLOPS_PER_ITEM)  # fmt: skip


ACCEPTED = _check(13.0, 60.0, 2.0, [1.0, 1.0, 1.0]).figures()


def test_the_normalised_figures_are_worked_by_hand():
    f = ACCEPTED
    assert f["speedup"] == pytest.approx(60 / 13, rel=0.01)
    # champion 4.1 GFLOP per 13 ms = 315 GFLOP/s; probe 2.147 GFLOP per 2 ms = 1074 GFLOP/s
    assert f["ceiling_fraction"] == pytest.approx((4.1 / 0.013) / (PROBE_FLOPS / 1e9 / 0.002), rel=0.01)
    assert f["speedup_low"] <= f["speedup"] <= f["speedup_high"]
    assert f["baseline_p50_ms"] == pytest.approx(60, rel=0.01) and f["probe_p50_ms"] == pytest.approx(2, rel=0.01)


def test_a_slower_machine_is_drift_not_a_regression():
    # Every round 25-40% slower, and one round in a slow phase: all three slow down alike.
    now = _check(13.0, 60.0, 2.0, [1.25, 1.4, 1.3]).figures()
    verdict = judge_normalised(ACCEPTED, now, threshold=0.10)
    assert not verdict.regression and verdict.stored, verdict
    drift = machine_drift(ACCEPTED, now, warn_at=0.2)
    assert drift is not None and drift.together and drift.warning
    assert drift.machine == pytest.approx(0.32, abs=0.03)
    assert drift.text == f"machine slower by {drift.machine:.0%}"


def test_a_slower_champion_is_a_regression_whatever_the_machine_did():
    # The champion 20% slower; the machine 30% faster in the same rounds.
    now = _check(13.0 * 1.2 * 0.7, 60.0 * 0.7, 2.0 * 0.7, [1.0, 1.0, 1.0]).figures()
    verdict = judge_normalised(ACCEPTED, now, threshold=0.10)
    assert verdict.regression and verdict.judged == "ceiling_fraction"
    assert verdict.checks["speedup"].change == pytest.approx(1 / 1.2 - 1, abs=0.01)
    assert verdict.checks["ceiling_fraction"].verdict == "regression"
    assert verdict.checks["ceiling_fraction"].judged and not verdict.checks["speedup"].judged
    drift = machine_drift(ACCEPTED, now, warn_at=0.5)
    assert drift is not None and drift.together and not drift.warning
    assert drift.text.startswith("machine faster by 3")


def test_the_references_moving_apart_is_not_called_machine_drift():
    now = _check(13.0, 60.0 * 1.3, 2.0, [1.0, 1.0, 1.0]).figures()  # only fp32 eager got slower
    drift = machine_drift(ACCEPTED, now, warn_at=0.1)
    assert drift is not None and not drift.together and not drift.warning
    assert "moved apart" in drift.text
    # The champion did not change: its speedup over a slower baseline rises, no regression.
    assert not judge_normalised(ACCEPTED, now, threshold=0.1).regression


def test_a_champion_accepted_before_normalised_figures_were_stored():
    old = {"p50_ms": 13.0, "throughput_ips": 76.0, "quality": 1.0}  # what older nights stored
    verdict = judge_normalised(old, ACCEPTED, threshold=0.1)
    assert verdict == Judgement({}, judged=None, stored=False) and not verdict.regression and not verdict.improvement
    assert machine_drift(old, ACCEPTED, warn_at=0.1) is None


def _noisy_baseline(champion_ms: float, swing: list[float]) -> Measured:
    """The baseline alone swings by round (as fp32 eager did in benchmarks/nightly_alarms.py:
    +14-17%), the champion and the probe stay put."""
    return Measured(_times(champion_ms, [1.0, 1.0, 1.0]), _times(60.0, swing), _times(2.0, [1.0, 1.0, 1.0]),
                    PROBE_FLOPS, FLOPS_PER_ITEM)  # fmt: skip


def test_a_noisy_baseline_neither_hides_a_slower_champion_nor_raises_a_false_alarm():
    # The champion 20% slower while the baseline swings: the ceiling fraction (judged) sees it.
    slower = judge_normalised(ACCEPTED, _noisy_baseline(13.0 * 1.2, [1.0, 1.17, 0.86]).figures(), threshold=0.10)
    assert slower.regression and slower.checks["ceiling_fraction"].verdict == "regression"
    # The champion unchanged, the baseline 15% faster in every round: the speedup drops by 13%
    # (shown) but the fraction holds, so no alarm.
    same = judge_normalised(ACCEPTED, _noisy_baseline(13.0, [0.85, 0.86, 0.84]).figures(), threshold=0.10)
    assert same.checks["speedup"].verdict == "regression" and not same.checks["speedup"].judged
    assert not same.regression, same


def test_without_a_probe_the_speedup_is_judged():
    accepted = {k: v for k, v in ACCEPTED.items() if not k.startswith("ceiling_fraction")}
    now = _check(13.0 * 1.3, 60.0, 2.0, [1.0, 1.0, 1.0]).figures()
    verdict = judge_normalised(accepted, now, threshold=0.10)
    assert verdict.judged == "speedup" and verdict.regression


# The served half (nightly/served.py): the champion's service measured after the rounds.
SERVER = ServingSettings(scenario="server", latency_bound_ms=50.0)


def test_the_served_figure_is_normalised_by_the_probe_and_judged_with_its_own_band():
    accepted = served_figures(40.0, 2.0, SERVER)  # 40 QPS at p99 <= 50 ms; probe p50 2 ms
    assert accepted["served_vs_probe"] == pytest.approx(40.0 * 0.002)
    # The machine twice as slow: half the QPS, twice the probe's p50: the same.
    slower_machine = judge_served(accepted, served_figures(20.0, 4.0, SERVER), threshold=0.25)
    assert slower_machine["served_vs_probe"].verdict == "same" and slower_machine["served_vs_probe"].judged
    assert slower_machine["served_qps"].verdict == "regression" and not slower_machine["served_qps"].judged
    # The service 40% slower on the same machine: judged a regression, and so the night is.
    slower_service = judge_served(accepted, served_figures(24.0, 2.0, SERVER), threshold=0.25)
    assert slower_service["served_vs_probe"].verdict == "regression"
    assert Judgement(slower_service).regression
    # 20% slower: inside the served band (0.25), not an alarm.
    assert not Judgement(judge_served(accepted, served_figures(32.0, 2.0, SERVER), threshold=0.25)).regression


def test_a_served_figure_of_another_bound_or_scenario_is_not_compared():
    accepted = served_figures(40.0, 2.0, SERVER)
    other_bound = served_figures(10.0, 2.0, ServingSettings(scenario="server", latency_bound_ms=15.0))
    offline = served_figures(90.0, 2.0, ServingSettings(scenario="offline"))
    assert judge_served(accepted, other_bound, 0.25) == {} and not comparable(accepted, other_bound)
    assert judge_served(accepted, offline, 0.25) == {}
    assert judge_served({}, served_figures(40.0, 2.0, SERVER), 0.25) == {}  # nothing stored yet
