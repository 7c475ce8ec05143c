"""Finalist confirmation statistics (pure numpy, no Ray): intervals, interleaving, choice."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.decide.confirm import (
    Confirmed,
    Interval,
    choose,
    hierarchical_bootstrap,
    interleaved,
    lead_over,
    paired_ratio_bootstrap,
)


def test_interleaved_order_is_a_b_c_a_b_c():
    assert interleaved(["A", "B", "C"], 2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_bootstrap_interval_contains_the_median_and_widens_with_process_spread():
    rng = np.random.default_rng(0)
    tight = [rng.normal(10.0, 0.1, 50) for _ in range(3)]
    spread = [rng.normal(m, 0.1, 50) for m in (9.0, 10.0, 11.0)]  # process-to-process shifts
    a = hierarchical_bootstrap(tight, np.median)
    b = hierarchical_bootstrap(spread, np.median)
    assert a.low <= a.value <= a.high and abs(a.value - 10.0) < 0.1
    assert (b.high - b.low) > 5 * (a.high - a.low)


def test_confirmed_columns():
    c = Confirmed(rounds=((0.010,) * 20, (0.011,) * 20, (0.010,) * 20), batch_size=2)
    cols = c.columns()
    assert cols["confirmed_p50_ms"] == pytest.approx(10.0)
    assert cols["confirmed_p50_ms_low"] <= 10.0 <= cols["confirmed_p50_ms_high"] <= 11.0
    assert cols["confirmed_throughput_ips"] == pytest.approx(2 / np.mean([0.010, 0.011, 0.010]))
    assert cols["confirmed_rounds"] == 3


EAGER, COMPILED = (0, 0, 1, 2), (2, 3, 1, 2)


def test_significant_lead_wins_even_if_more_complex():
    iv = {0: Interval(10.0, 9.5, 10.5), 1: Interval(14.0, 13.5, 14.5)}
    assert choose(iv, {0: COMPILED, 1: EAGER}, lower_is_better=True)[0] == 0


def test_insignificant_lead_goes_to_the_simpler_config():
    iv = {0: Interval(10.0, 9.0, 11.5), 1: Interval(11.0, 10.5, 12.0)}
    key, why = choose(iv, {0: COMPILED, 1: EAGER}, lower_is_better=True)
    assert key == 1 and "not significant" in why


def test_throughput_objective_prefers_higher():
    iv = {0: Interval(100.0, 95.0, 105.0), 1: Interval(200.0, 190.0, 210.0)}
    assert choose(iv, {0: EAGER, 1: COMPILED}, lower_is_better=False)[0] == 1


def test_speedup_paired_by_round_cancels_a_slow_minute():
    # The machine runs 1.0x, 1.3x and 0.9x as fast in three rounds; within a round the
    # baseline (60 ms) and the finalist (15 ms) are slowed alike: the speedup is 4.0 in each.
    rng = np.random.default_rng(1)
    factor = {0: 1.0, 1: 1.3, 2: 0.9}
    base = {r: 0.060 * f * (1 + 0.005 * rng.standard_normal(40)) for r, f in factor.items()}
    fast = {r: 0.015 * f * (1 + 0.005 * rng.standard_normal(40)) for r, f in factor.items()}
    paired = paired_ratio_bootstrap(base, fast)
    assert paired.value == pytest.approx(4.0, rel=0.02)
    assert paired.high - paired.low < 0.1  # the slow round cancels out of the ratio
    # The medians' own intervals carry the 1.3x round: far wider than the ratio's.
    b = Confirmed(tuple(tuple(base[r]) for r in factor), 1, (0, 1, 2)).p50_ms
    f = Confirmed(tuple(tuple(fast[r]) for r in factor), 1, (0, 1, 2)).p50_ms
    assert b.high / f.low - b.low / f.high > 1.0


def test_speedup_uses_only_rounds_both_ran_in():
    base = {0: [0.06] * 5, 1: [0.09] * 5}
    fast = {1: [0.03] * 5, 2: [0.01] * 5}  # round 0 of the finalist and 2 of the baseline failed
    assert paired_ratio_bootstrap(base, fast) == Interval(3.0, 3.0, 3.0)
    c = Confirmed(((0.03,) * 5, (0.01,) * 5), 1, (1, 2))
    assert c.speedup_over(Confirmed(((0.06,) * 5, (0.09,) * 5), 1, (0, 1))).value == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no round"):
        paired_ratio_bootstrap({0: [0.06]}, {1: [0.03]})


def test_a_lead_paired_by_round_survives_a_slow_phase_that_unpaired_intervals_call_a_tie():
    # batch 8 at 340 items/s against batch 4 at 300, measured in the same three rounds; the
    # host ran 1.5x slower in rounds 2 and 3 (mobilenet's throughput confirmation, issue 13).
    rng = np.random.default_rng(1)
    slow = (1.0, 1.5, 1.5)

    def runs(batch: int, ips: float) -> Confirmed:
        per_call = batch / ips
        return Confirmed(tuple(tuple(rng.normal(per_call * f, per_call * 0.01, 30)) for f in slow), batch, (0, 1, 2))

    bs8, bs4 = runs(8, 340.0), runs(4, 300.0)
    intervals = {0: bs8.throughput_ips, 1: bs4.throughput_ips}
    assert intervals[0].overlaps(intervals[1])  # each on its own: a tie, and the simpler batch 4 would win
    simpler = {0: (1, 0, 8, 2), 1: (1, 0, 4, 2)}
    assert choose(intervals, simpler, lower_is_better=False)[0] == 1

    lead = lead_over(bs8, bs4, lower_is_better=False)
    assert lead.low > 1.08 and lead.value == pytest.approx(340 / 300, rel=0.02)
    key, why = choose(intervals, simpler, lower_is_better=False, lead=lambda b, k: lead_over(
        (bs8, bs4)[b], (bs8, bs4)[k], lower_is_better=False))  # fmt: skip
    assert key == 0 and why == "best confirmed figure (its lead is significant by round)"


def test_a_streamed_finalist_is_confirmed_and_compared_by_its_stream_windows():
    rng = np.random.default_rng(2)
    # Batch 8: 40 ms a call (200/s one call at a time), 300/s as a stream; batch 4 runs one
    # call at a time at 250/s. By calls alone batch 4 leads; as streams, batch 8 does.
    calls8 = tuple(tuple(rng.normal(0.040, 0.0004, 20)) for _ in range(3))
    stream8 = tuple(tuple(rng.normal(300.0, 3.0, 3)) for _ in range(3))
    bs8 = Confirmed(calls8, 8, (0, 1, 2), stream8)
    bs4 = Confirmed(tuple(tuple(rng.normal(0.016, 0.00016, 20)) for _ in range(3)), 4, (0, 1, 2))
    assert bs8.throughput_ips.value == pytest.approx(200, rel=0.02)
    assert bs8.stream_ips.value == pytest.approx(300, rel=0.02) and bs4.stream_ips == bs4.throughput_ips
    cols = bs8.columns()
    assert cols["confirmed_stream_ips_low"] <= cols["confirmed_stream_ips"] <= cols["confirmed_stream_ips_high"]
    lead = lead_over(bs8, bs4, lower_is_better=False)
    assert lead.value == pytest.approx(300 / 250, rel=0.03) and lead.low > 1.0
    assert lead_over(bs4, bs8, lower_is_better=False).value == pytest.approx(250 / 300, rel=0.03)


def test_a_paired_lead_within_noise_is_still_a_tie():
    rng = np.random.default_rng(2)
    a = Confirmed(tuple(tuple(rng.normal(0.0100, 0.0008, 30)) for _ in range(3)), 1, (0, 1, 2))
    b = Confirmed(tuple(tuple(rng.normal(0.0101, 0.0008, 30)) for _ in range(3)), 1, (0, 1, 2))
    lead = lead_over(a, b, lower_is_better=True)
    assert lead.low <= 1.0 <= lead.high
    key, why = choose({0: a.p50_ms, 1: b.p50_ms}, {0: COMPILED, 1: EAGER}, lower_is_better=True,
                      lead=lambda best, k: lead_over((a, b)[best], (a, b)[k], lower_is_better=True))  # fmt: skip
    assert key == 1 and ("not significant by round" in why or "simplest of 2 tied" in why)  # the simpler one
