"""Shared fixtures: a tiny model, a tiny space file, a temporary MLflow store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # tiny_models is importable as `tiny_models:small_cnn`

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

# Fast timing knobs for tests: figures are real but short; never asserted against a clock.
FAST_TIMING = {
    "warmup_max_s": 1.0,
    "window_s": 0.02,
    "min_iters": 5,
    "min_time_s": 0.1,
    "max_time_s": 0.6,
}


def write_space(path: Path, **sections: dict) -> Path:
    doc = {
        "dimensions": {"batch_size": [1, 2], "compile": ["eager", "torchscript"]},
        "search": {"trials": 4, "time_budget_minutes": 10},
        "eval": {"samples": 8, "calibration_samples": 4, "input_size": 32},
        "timing": FAST_TIMING,
        "confirm": {"finalists": 2, "rounds": 2},
    }
    for k, v in sections.items():
        doc.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    return write_space(tmp_path / "space.yaml")


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def small_reference():
    """fp32 reference for the tiny CNN on synthetic data (computed in this process)."""
    from tuner.models import ModelSpec
    from tuner.reference import prepare_reference

    return prepare_reference(ModelSpec("tiny_models:small_cnn", "random", 0), input_size=32, n_eval=8, n_calib=4)
