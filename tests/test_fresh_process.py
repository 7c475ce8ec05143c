"""trial.process.fresh_process, directly (no Ray): every way a trial's process can end comes back
as a result, with the status, error and traceback the search records."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tuner.trial.process import FAULT_LOG, MARKER, fresh_process


def _ok(x: int) -> dict[str, Any]:
    import torch

    torch.set_num_interop_threads(1)  # settable: the process is fresh, whatever ran before
    return {"status": "ok", "value": x * 2, "pid": os.getpid()}


def _raise() -> dict[str, Any]:
    raise ValueError("bad combination\nsecond line")


def _abort() -> dict[str, Any]:
    os.abort()


def _hang() -> dict[str, Any]:
    while True:
        time.sleep(1)


def _allocate() -> dict[str, Any]:
    hoard = [bytearray(64 * 2**20) for _ in range(40)]  # touched: 2.5 GB resident
    return {"status": "ok", "n": len(hoard)}


def test_each_call_is_a_new_process_that_returns_its_result(tmp_path):
    a = fresh_process(_ok, (3,), tmp_path / "a", None, None)
    b = fresh_process(_ok, (4,), tmp_path / "b", None, None)
    assert (a["value"], b["value"]) == (6, 8)
    assert len({a["pid"], b["pid"], os.getpid()}) == 3


def test_an_exception_is_an_error_result_with_its_traceback(tmp_path):
    out = fresh_process(_raise, (), tmp_path, None, None)
    assert out["status"] == "error" and out["error"] == "ValueError: bad combination"
    assert "in _raise" in out["traceback"] and "second line" in out["traceback"]


def test_a_native_crash_is_reported_from_the_fault_log(tmp_path):
    out = fresh_process(_abort, (), tmp_path, None, None)
    assert out["status"] == "failed" and out["error"].startswith("trial process crashed: Aborted")
    assert "Fatal Python error: Aborted" in (tmp_path / FAULT_LOG).read_text()


def test_a_hang_is_killed_at_the_time_limit(tmp_path):
    start = time.monotonic()
    out = fresh_process(_hang, (), tmp_path, 2, None)
    assert out["status"] == "timeout" and "still running after 2 s" in out["error"]
    assert time.monotonic() - start < 30 and (tmp_path / MARKER).exists()


@pytest.mark.slow  # allocates towards 2.5 GB; killed past 1.5 GB
def test_memory_past_the_cap_is_killed(tmp_path):
    out = fresh_process(_allocate, (), tmp_path, 60, 1500)
    assert out["status"] == "oom" and "passed the 1500 MB cap" in out["error"]


def test_a_niced_parent_does_not_slow_the_measured_process():
    # Ray runs its workers at nice 15; the trial process goes back to 0 where it may (root).
    code = "from tuner.core.env import measurement_priority; print(measurement_priority())"
    out = subprocess.run(["nice", "-n", "10", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == (0 if os.geteuid() == 0 else 10)
