"""Only a store that does not answer counts as a tracking outage; a bug in what we send is
raised, not swallowed (tracking/store.py `is_outage`, `_tolerant`). Real MLflow exceptions,
a real sqlite store."""

from __future__ import annotations

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from sqlalchemy.exc import OperationalError

from tuner.tracking.store import Tracker, is_outage


@pytest.mark.parametrize(
    "error",
    [
        MlflowException(
            "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/create failed with exception "
            "HTTPConnectionPool(...): Max retries exceeded"
        ),  # fmt: skip
        MlflowException(
            "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 503 != 200",
            error_code=TEMPORARILY_UNAVAILABLE,
        ),  # fmt: skip
        MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE),  # sqlite, wrapped
        requests.ConnectionError("connection refused"),
        ConnectionResetError(104, "reset"),
        OperationalError("INSERT ...", {}, Exception("database is locked")),
    ],
)
def test_a_store_that_does_not_answer_is_an_outage(error):
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        MlflowException("'NoneType' object has no attribute 'run_id'"),  # INTERNAL_ERROR around our bug
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"}),
        TypeError("unsupported operand"),
        FileNotFoundError("out/trials.csv"),
    ],
)
def test_a_refused_request_or_our_bug_is_not(error):
    assert not is_outage(error)


def test_a_bug_in_what_we_log_is_raised_and_the_tracker_stays_up(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tuner/outage")
    run_id = tracker.start_parent("search x", {"trials": 3}, {})
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        tracker.log(run_id, params={"trials": 4})  # a param logged twice with another value: our bug
    assert not tracker.down
    tracker.log(run_id, metrics={"wall_s": 1.0})  # later writes still go through
    assert tracker.run(run_id).data.metrics["wall_s"] == 1.0


def test_a_vanished_http_store_is_an_outage_and_later_writes_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the search sets them (core/env.py)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tuner/outage")
    run_id = tracker.start_parent("search x", {}, {})
    from mlflow.tracking import MlflowClient

    tracker.client = MlflowClient("http://127.0.0.1:9")  # nothing listens on the discard port
    tracker.log(run_id, metrics={"wall_s": 1.0})
    assert tracker.down
    assert tracker.log_child(run_id, "t", {}, {}, {}) is None  # skipped, no wait for timeouts
