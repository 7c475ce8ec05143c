"""One rule names the confirmed figures (core/schema.py): `confirmed_<figure>`, and
`confirmed_<figure>_low` / `_high` for its 95% interval. A trials.csv or child runs written
under the names before the rule read back under the new ones."""

from __future__ import annotations

import io

import pandas as pd

from tuner.core.schema import CONFIRMED_COLUMNS, CONFIRMED_INTERVALS, CONFIRMED_RENAMED, CONFIRMED_VALUES, row_from_run
from tuner.outputs.tables import read_trials


def test_every_confirmed_column_follows_the_rule():
    expected = {f"confirmed_{f}{s}" for f in CONFIRMED_INTERVALS for s in ("", "_low", "_high")}
    expected |= {f"confirmed_{v}" for v in CONFIRMED_VALUES}
    assert set(CONFIRMED_COLUMNS) == expected and len(CONFIRMED_COLUMNS) == len(expected)
    assert set(CONFIRMED_RENAMED.values()) <= set(CONFIRMED_COLUMNS)


def test_an_earlier_searchs_trials_csv_reads_under_todays_names():
    old = pd.DataFrame([{"trial_id": "a1", "confirmed_p50_ms": 10.0, "confirmed_p50_ci_low_ms": 9.5,
                         "confirmed_p50_ci_high_ms": 10.4, "confirmed_speedup_ci_low": 4.0,
                         "confirmed_ceiling_fraction_ci_high": 0.8}])  # fmt: skip
    df = read_trials(io.StringIO(old.to_csv(index=False)))
    row = df.iloc[0]
    assert (row["confirmed_p50_ms_low"], row["confirmed_p50_ms_high"]) == (9.5, 10.4)
    assert row["confirmed_speedup_vs_baseline_low"] == 4.0 and row["confirmed_ceiling_fraction_high"] == 0.8
    assert not any("_ci_" in c for c in df.columns)


def test_an_earlier_searchs_child_run_reads_under_todays_names():
    row = row_from_run({"precision": "fp32"}, {"confirmed_throughput_ci_low": 80.0, "latency_p50_ms": 12.0}, {}, "r")
    assert row["confirmed_throughput_ips_low"] == 80.0 and row["latency_p50_ms"] == 12.0
