"""The nightly judgements on figures worked out by hand: what counts as a regression, and
when a new recommendation replaces the champion."""

from __future__ import annotations

import pandas as pd
import pytest

from tuner.measure.hardware import usable_cores
from tuner.nightly.check import probe_threads_of
from tuner.nightly.regression import decide_champion, judge

ACCEPTED = {"p50_ms": 10.0, "p50_ms_low": 9.8, "p50_ms_high": 10.2, "throughput_ips": 100.0,
            "throughput_ips_low": 98.0, "throughput_ips_high": 102.0, "quality": 0.80,
            "max_accuracy_drop": 0.01}  # fmt: skip


def now(p50: float, thr: float, q: float = 0.80, spread: float = 0.02) -> dict[str, float]:
    return {"p50_ms": p50, "p50_ms_low": p50 * (1 - spread), "p50_ms_high": p50 * (1 + spread),
            "throughput_ips": thr, "throughput_ips_low": thr * (1 - spread), "throughput_ips_high": thr * (1 + spread),
            "quality": q}  # fmt: skip


def test_a_change_within_the_threshold_is_not_a_regression():
    v = judge(ACCEPTED, now(10.8, 93.0), threshold=0.10)  # 8% slower, 7% less throughput
    assert not v.regression and not v.improvement
    assert v.checks["p50_ms"].change == pytest.approx(0.08) and v.checks["p50_ms"].verdict == "same"


def test_slower_beyond_the_threshold_is_a_regression_and_faster_an_improvement():
    slow = judge(ACCEPTED, now(11.5, 87.0), threshold=0.10)
    assert slow.regression and slow.checks["p50_ms"].verdict == "regression"
    assert slow.checks["throughput_ips"].verdict == "regression"  # -13%
    fast = judge(ACCEPTED, now(8.5, 118.0), threshold=0.10)
    assert fast.improvement and not fast.regression


def test_a_wide_interval_widens_the_band():
    # 15% slower, but tonight's interval is +-20% wide: not beyond the noise.
    v = judge(ACCEPTED, now(11.5, 100.0, spread=0.20), threshold=0.10)
    assert v.checks["p50_ms"].band == pytest.approx(0.20) and not v.regression


def test_a_quality_drop_beyond_the_allowed_drop_is_a_regression():
    v = judge(ACCEPTED, now(10.0, 100.0, q=0.78), threshold=0.10)  # drop 0.02 > the allowed 0.01 x 0.80
    assert v.regression and v.checks["quality"].verdict == "regression"


def row(label: str, p50: float, low: float, high: float, feasible: bool = True) -> pd.Series:
    return pd.Series({"label": label, "feasible": feasible, "quality": 1.0, "confirmed_p50_ms": p50,
                      "confirmed_p50_ms_low": low, "confirmed_p50_ms_high": high,
                      "confirmed_throughput_ips": 1000 / p50, "confirmed_throughput_ips_low": 1000 / high,
                      "confirmed_throughput_ips_high": 1000 / low})  # fmt: skip


def test_champion_changes_only_on_a_significant_win_or_a_broken_champion():
    champ = row("A", 10.0, 9.5, 10.5)
    assert decide_champion(None, None, row("B", 9.0, 8.5, 9.4), "latency")[0]  # first night
    assert not decide_champion("A", champ, row("B", 9.8, 9.0, 10.2), "latency")[0]  # overlapping: keep A
    assert decide_champion("A", champ, row("B", 8.0, 7.5, 8.5), "latency") == (
        True, "the new recommendation is significantly better (confirmed intervals do not overlap)")  # fmt: skip
    assert decide_champion("A", row("A", 10.0, 9.5, 10.5, feasible=False), row("B", 11.0, 10.5, 11.5), "latency")[0]
    assert not decide_champion("A", champ, champ, "latency")[0]  # recommended again
    assert not decide_champion("A", champ, None, "latency")[0]
    assert decide_champion("A", champ, row("B", 8.0, 7.5, 8.5), "throughput")[0]  # 125 items/s vs 100, no overlap


def _check(figures: dict[str, float], accepted: dict[str, float]):
    from tuner.nightly.check import CheckResult
    from tuner.nightly.drift import judge_normalised, machine_drift

    return CheckResult(figures, judge_normalised(accepted, figures, 0.10), machine_drift(accepted, figures, 0.15))


NORMALISED = {**ACCEPTED, "speedup": 4.0, "speedup_low": 3.9, "speedup_high": 4.1, "ceiling_fraction": 0.70,
              "ceiling_fraction_low": 0.69, "ceiling_fraction_high": 0.71, "baseline_p50_ms": 40.0,
              "probe_p50_ms": 2.0}  # fmt: skip


def test_the_verdict_is_judged_on_normalised_figures_and_quality_not_on_absolute_ones():
    from tuner.nightly.regression import nightly_verdict

    # The machine 30% slower: absolute p50 +30%, every normalised figure unchanged.
    slower = {**now(13.0, 77.0), **{k: v for k, v in NORMALISED.items() if k.startswith(("speedup", "ceiling"))},
              "baseline_p50_ms": 52.0, "probe_p50_ms": 2.6}  # fmt: skip
    v = nightly_verdict(NORMALISED, _check(slower, NORMALISED), 0.80, 0.01, 0.10)
    assert not v.regression and set(v.checks) == {"speedup", "ceiling_fraction", "quality"}
    assert v.absolute["p50_ms"].verdict == "regression"  # what the old check would have called
    assert v.drift.text == "machine slower by 30%"
    # Quality still counts on its own: a drop beyond the allowed one is a regression.
    assert nightly_verdict(NORMALISED, _check(slower, NORMALISED), 0.70, 0.01, 0.10).regression


def test_accepted_figures_carry_the_normalised_figures_and_references():
    from tuner.decide.finalists import Confirmation
    from tuner.decide.pareto import Recommendation
    from tuner.nightly.regression import accepted_figures

    cols = {"confirmed_p50_ms": 12.0, "confirmed_p50_ms_low": 11.8, "confirmed_p50_ms_high": 12.3,
            "confirmed_throughput_ips": 80.0, "confirmed_throughput_ips_low": 79.0,
            "confirmed_throughput_ips_high": 81.0, "confirmed_speedup_vs_baseline": 4.5,
            "confirmed_speedup_vs_baseline_low": 4.4, "confirmed_speedup_vs_baseline_high": 4.6,
            "confirmed_ceiling_fraction": 0.75, "confirmed_ceiling_fraction_low": 0.74,
            "confirmed_ceiling_fraction_high": 0.76}  # fmt: skip
    df = pd.DataFrame([
        {"label": "base", "is_baseline": True, "status": "ok", "quality": 1.0, "precision": "fp32",
         "quantization": "none", "confirmed_p50_ms": 54.0},
        {"label": "int8", "is_baseline": False, "status": "ok", "quality": 1.0, "precision": "fp32",
         "quantization": "static_int8", "latency_p50_ms": 12.5, "throughput_ips": 79.0, **cols},
    ])  # fmt: skip
    confirmation = Confirmation(Recommendation(1, "confirmed"), 30.0, 2, {"int8": 2.5, "fp32": 14.0})
    f = accepted_figures(df.iloc[1], df, confirmation)
    assert f["speedup"] == 4.5 and f["speedup_low"] == 4.4 and f["ceiling_fraction_high"] == 0.76
    assert f["baseline_p50_ms"] == 54.0 and f["probe_p50_ms"] == 2.5  # the int8 probe, not the fp32 one
    # The nightly check runs its probe on the threads the accepted one ran on (a probe on
    # one thread against an accepted two-thread probe reads as drift and hides a regression).
    assert f["probe_threads"] == 2 and probe_threads_of(f) == 2
    assert probe_threads_of({}) == usable_cores()  # accepted before the thread count was stored
    assert f["p50_ms"] == 12.0 and f["quality"] == 1.0
