"""Pareto front and recommendation on hand-made tables (pure pandas, milliseconds)."""

from __future__ import annotations

import pandas as pd
import pytest

from tuner.config.space import Constraints
from tuner.decide.pareto import feasible_mask, pareto_mask, recommend


def row(label, p90, thr, quality, status="ok", drop=0.0, batch=1, compile="eager", precision="fp32",
        quant="none", baseline=False, rss=100.0):  # fmt: skip
    return {
        "label": label, "latency_p90_ms": p90, "throughput_ips": thr, "stream_ips": thr, "quality": quality,
        "accuracy_drop": drop, "status": status, "is_baseline": baseline, "peak_rss_mb": rss,
        "precision": precision, "quantization": quant, "batch_size": batch, "threads": 2,
        "compile": compile, "layout": "contiguous",
    }  # fmt: skip


def table(*rows):
    return pd.DataFrame(list(rows))


def test_dominated_rows_are_not_on_the_front():
    df = table(
        row("base", 50, 20, 1.0, baseline=True),
        row("fast", 10, 100, 1.0),
        row("slow", 60, 15, 1.0),  # dominated by everything
        row("tput", 40, 300, 0.999, batch=16),  # slower but more throughput: on the front
    )
    front = pareto_mask(df, feasible_mask(df, Constraints(max_accuracy_drop=0.01)))
    assert front.tolist() == [False, True, False, True]


def test_equal_points_do_not_dominate_each_other():
    df = table(row("a", 10, 100, 1.0), row("b", 10, 100, 1.0), row("c", 20, 50, 1.0))
    front = pareto_mask(df, pd.Series(True, index=df.index))
    assert front.tolist() == [True, True, False]


def test_infeasible_and_failed_rows_are_excluded():
    df = table(
        row("base", 50, 20, 1.0, baseline=True),
        row("too-inaccurate", 5, 500, 0.90, drop=0.10),
        row("failed", float("nan"), float("nan"), float("nan"), status="failed"),
        row("inaccurate", float("nan"), float("nan"), float("nan"), status="inaccurate"),
        row("good", 20, 50, 1.0),
    )
    limits = Constraints(max_accuracy_drop=0.01)
    feas = feasible_mask(df, limits)
    assert feas.tolist() == [True, False, False, False, True]
    assert pareto_mask(df, feas).tolist() == [False, False, False, False, True]
    assert df.loc[recommend(df, "latency", limits).index, "label"] == "good"


def test_objective_throughput_picks_the_highest_throughput():
    df = table(row("base", 50, 20, 1.0, baseline=True), row("lat", 10, 100, 1.0), row("thr", 80, 400, 1.0, batch=32))
    assert df.loc[recommend(df, "throughput", Constraints()).index, "label"] == "thr"
    assert df.loc[recommend(df, "latency", Constraints()).index, "label"] == "lat"


def test_objective_throughput_ranks_by_the_streamed_figure():
    # OpenVINO's THROUGHPUT variant: its calls drain the queue (300/s one call at a time), a
    # stream keeps it full (450/s); the other runs one call at a time (400/s either way).
    ov = {**row("ov", 30, 300, 1.0, batch=8, compile="openvino_throughput"), "stream_ips": 450}
    df = table(row("base", 50, 20, 1.0, baseline=True), row("ts", 25, 400, 1.0, batch=8), ov)
    assert df.loc[recommend(df, "throughput", Constraints()).index, "label"] == "ov"


def test_latency_and_memory_limits():
    df = table(
        row("base", 50, 20, 1.0, baseline=True),
        row("fast-but-fat", 10, 100, 1.0, rss=5000),
        row("ok", 30, 40, 1.0, rss=500),
    )
    rec = recommend(df, "latency", Constraints(max_memory_mb=1000, max_latency_ms=40))
    assert df.loc[rec.index, "label"] == "ok"


def test_on_a_gpu_the_memory_limit_is_the_device_s_peak():
    df = table(
        {**row("gpu-fat", 5, 400, 1.0, rss=300), "peak_device_mb": 9000.0},  # small host, big GPU footprint
        {**row("gpu-lean", 8, 300, 1.0, rss=3000), "peak_device_mb": 800.0},  # the host figure does not count
        {**row("cpu", 30, 40, 1.0, rss=500), "peak_device_mb": None},  # no GPU: its resident memory
    )
    assert list(feasible_mask(df, Constraints(max_memory_mb=1000))) == [False, True, True]


def test_exact_tie_goes_to_the_simpler_config():
    df = table(
        row("compiled-int8", 10, 100, 1.0, compile="torchscript", quant="static_int8"),
        row("eager-fp32", 10, 100, 1.0),
        row("eager-bf16", 10, 100, 1.0, precision="bf16"),
    )
    assert df.loc[recommend(df, "latency", Constraints()).index, "label"] == "eager-fp32"


def test_falls_back_to_the_baseline_when_nothing_meets_the_limits():
    df = table(row("base", 50, 20, 1.0, baseline=True), row("fast", 10, 100, 1.0))
    rec = recommend(df, "latency", Constraints(max_latency_ms=1))
    assert df.loc[rec.index, "label"] == "base"
    assert "baseline" in rec.reason


def test_nothing_ok_means_no_recommendation():
    df = table(row("base", float("nan"), float("nan"), float("nan"), status="failed", baseline=True))
    assert recommend(df, "latency", Constraints()).index is None


def test_recommendation_is_on_the_front():
    df = table(
        row("base", 50, 20, 1.0, baseline=True),
        row("a", 12, 90, 0.995, drop=0.005),
        row("b", 12, 95, 1.0),  # same p90 as a, better elsewhere: dominates a
        row("c", 30, 200, 1.0, batch=8),
    )
    limits = Constraints()
    front = pareto_mask(df, feasible_mask(df, limits))
    rec = recommend(df, "latency", limits)
    assert front[rec.index], "the recommended row must be non-dominated"
    assert df.loc[rec.index, "label"] == "b"


def test_unknown_objective_is_an_error():
    with pytest.raises(ValueError, match="objective"):
        recommend(table(row("base", 1, 1, 1.0)), "memory", Constraints())
