"""The nightly report's headings and header (tuner/nightly/report.py), on hand-made results:
each model's heading names it and its hardware class and says what its night was; the wall
time is the one measured."""

from __future__ import annotations

from tuner.nightly.report import write_report

UNREACHABLE = "error: --tracking-uri http://mlflow:5000: no MLflow server answers at mlflow:5000"


def test_an_errored_model_is_reported_as_an_error_under_its_class(tmp_path):
    results = [
        {"model": "resnet50", "hardware": "zen4", "status": UNREACHABLE},
        {"model": "resnet50", "hardware": "zen3", "status": UNREACHABLE},
        {"model": "mobilenet_v3_large", "hardware": None, "status": "finished", "recommended": "x", "champion": "x"},
        {"model": "resnet18", "hardware": None, "status": "finished", "regression": True},
        {"model": "vgg11", "hardware": None, "status": "not run (job time budget used up)"},
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


def test_a_long_night_is_in_minutes(tmp_path):
    write_report([{"model": "m", "status": "finished"}], tmp_path, wall_s=1830, budget_min=None)
    assert "Wall time 30.5 min" in (tmp_path / "nightly-report.md").read_text()
