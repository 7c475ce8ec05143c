"""Process-wide settings, each under a name that says what it is for. Nothing here runs at
import time: the CLI calls what a command needs, before it imports Ray or MLflow (both read
their environment when imported; docs/architecture.md §7).

* `measurement_env()`, `measurement_priority()`, `pin_threads()`: what a *measurement*
  needs. Ray starts its workers at nice 15, below its own daemons and the driver, so a
  trial's timing would queue behind them; the trial's process also renices itself where it
  may, and pins its thread counts.
* `service_env()`: how tuner needs Ray, Tune and MLflow to behave: no auth token or
  telemetry (no network here), our own SIGINT handling, and an MLflow store that goes away
  costs seconds, not minutes of retries.
* `quiet_logs()`: only what makes the terminal readable; changes no behaviour.

`setdefault` everywhere: a value the user exported wins.
"""

from __future__ import annotations

import logging
import os

MEASUREMENT = {"RAY_worker_niceness": "0"}  # read by the raylet that ray.init starts
SERVICE = {
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # ours stops the search cleanly (search/stopping.py)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
QUIET = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # mlflow sets its own level when imported
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars, read at each transfer
}


def _setdefault(values: dict[str, str]) -> None:
    for k, v in values.items():
        os.environ.setdefault(k, v)


def measurement_env() -> None:
    _setdefault(MEASUREMENT)


def service_env() -> None:
    _setdefault(SERVICE)


def quiet_logs() -> None:
    _setdefault(QUIET)
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune logs every errored trial with Ray's traceback; the recorder reports them better.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    # Serve's INFO lines ("Started Serve in namespace ...") say less than `tuner serve` prints
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # "No CUDA runtime is found" on a CPU-only box, when AOTInductor or the profiler loads it
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def pin_threads(n: int) -> None:
    """Exactly `n` intra-op threads and one inter-op thread for this process's measurement.

    torch lets the inter-op count be set once per process, before any parallel work; that is
    why every trial runs in a fresh process. Setting it again to the value it already has is
    a no-op here; any other failure is raised, never swallowed: a measurement must not run
    with threads other than the ones its label says.
    """
    import torch

    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)  # RuntimeError when parallel work has already started


def measurement_priority() -> int:
    """Run at nice 0 where this process may (a Ray worker on a cluster started without
    `RAY_worker_niceness=0` runs at nice 15, behind every daemon). Returns the nice value.
    Call before torch starts its threads: on Linux the value is per thread, and inherited."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass  # lowering niceness needs CAP_SYS_NICE; the value is recorded either way
    return os.getpriority(os.PRIO_PROCESS, 0)
