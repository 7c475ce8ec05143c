"""The nightly report's headings and header (tuner/nightly/report.py), on hand-made results:
each model's heading names it and its hardware class and says what its night was; the wall
time is the one measured."""

from __future__ import annotations

import json

from tuner.nightly.report import write_report
from tuner.nightly.verdict import ModelNight

UNREACHABLE = "error: --tracking-uri http://mlflow:5000: no MLflow server answers at mlflow:5000"


def test_an_errored_model_is_reported_as_an_error_under_its_class(tmp_path):
    results = [
        ModelNight("resnet50", "zen4", status=UNREACHABLE),
        ModelNight("resnet50", "zen3", status=UNREACHABLE),
        ModelNight("mobilenet_v3_large", recommended="x", champion="x"),
        ModelNight("resnet18", regression=True),
        ModelNight("vgg11", status="not run (job time budget used up)"),
    ]
    write_report(results, tmp_path, wall_s=4.2, budget_min=30)
    md = (tmp_path / "nightly-report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == [
        "## `resnet50` on class `zen4`: error",
        "## `resnet50` on class `zen3`: error",
        "## `mobilenet_v3_large` on this machine's class: ok",
        "## `resnet18` on this machine's class: REGRESSION",
        "## `vgg11` on this machine's class: not run",
    ]
    assert "Wall time 4 s, measured from the run's start" in md and "time budget for its searches: 30 min" in md
    assert f"- status: `{UNREACHABLE}`" in md
    # the JSON report reads back as the same results
    doc = json.loads((tmp_path / "nightly-report.json").read_text())
    assert [ModelNight.from_json(m) for m in doc["models"]] == results


def test_a_long_night_is_in_minutes(tmp_path):
    write_report([ModelNight("m")], tmp_path, wall_s=1830, budget_min=None)
    assert "Wall time 30.5 min" in (tmp_path / "nightly-report.md").read_text()
