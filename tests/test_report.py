"""`report --baseline-run-id`: the per-config comparison, on figures worked out by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from tuner.outputs.compare import compare, render
from tuner.outputs.tables import read_trials, write_tables


def trials(rows):
    return pd.DataFrame(
        rows, columns=["label", "status", "latency_p50_ms", "latency_p90_ms", "throughput_ips", "quality"]
    )


def test_compare_gives_the_relative_change_per_config():
    new = trials([
        ["fp32 bs1 t2 eager nchw", "ok", 50.0, 55.0, 20.0, 1.0],
        ["int8-static bs1 t2 torchscript nchw", "ok", 13.0, 15.0, 75.0, 0.99],
        ["bf16 bs1 t2 inductor cl", "failed", None, None, None, None],
    ])  # fmt: skip
    old = trials([
        ["fp32 bs1 t2 eager nchw", "ok", 40.0, 44.0, 25.0, 1.0],
        ["int8-static bs1 t2 torchscript nchw", "ok", 12.0, 15.0, 80.0, 0.99],
        ["int8-static bs1 t2 torchscript nchw", "ok", 14.0, 15.0, 70.0, 0.99],  # measured twice: median
        ["fp32 bs8 t2 eager nchw", "ok", 300.0, 310.0, 26.0, 1.0],
    ])  # fmt: skip
    cmp = compare(new, old).set_index("label")
    fp32 = cmp.loc["fp32 bs1 t2 eager nchw"]
    assert fp32["latency_p90_ms_change"] == pytest.approx(55 / 44 - 1)  # 25% slower: a regression
    assert fp32["throughput_ips_change"] == pytest.approx(20 / 25 - 1)
    int8 = cmp.loc["int8-static bs1 t2 torchscript nchw"]
    assert int8["latency_p50_ms_baseline"] == 13.0 and int8["latency_p50_ms_change"] == pytest.approx(0.0)
    assert cmp.loc["fp32 bs8 t2 eager nchw", "in"] == "baseline only"
    assert "bf16 bs1 t2 inductor cl" not in cmp.index  # no figures on either side
    assert list(cmp.index[:2]) == ["int8-static bs1 t2 torchscript nchw", "fp32 bs1 t2 eager nchw"]  # by p90


def test_render_markdown_formats_changes_as_percentages():
    cmp = compare(trials([["a", "ok", 11.0, 11.0, 10.0, 1.0]]), trials([["a", "ok", 10.0, 10.0, 10.0, 1.0]]))
    md = render(cmp, "markdown").splitlines()
    assert md[0].startswith("| label | latency_p50_ms |") and "+10.0%" in md[2]


def test_trial_ids_that_look_like_numbers_come_back_as_the_same_text(tmp_path):
    # Ray's trial ids are 8 hex digits; CI once drew "66674806", which read back as an int,
    # and "12345e67" would read back as a float. Resume and sync match ids as text.
    ids = ["66674806", "12345e67", "01234567", "a1b2c3d4"]
    df = pd.DataFrame({"trial_id": ids, "mlflow_run_id": ["0" * 32, "", "1" * 32, "ab" * 16], "pareto": [True] * 4})
    write_tables(df, tmp_path)
    for name in ("trials.csv", "pareto.csv"):
        back = read_trials(tmp_path / name)
        assert list(back["trial_id"]) == ids
        assert back["mlflow_run_id"].iloc[0] == "0" * 32 and pd.isna(back["mlflow_run_id"].iloc[1])
