"""Each trial runs in a fresh process; that process may crash, hang or eat the machine's
memory, and the search must survive it.

`fresh_process(target, args, folder, ...)` is called in the Ray Tune actor (and in the
confirmation actor). It runs `target(*args)` in a new process forked from a
`multiprocessing` forkserver that has already imported ray, torch and tuner, so a trial
starts in about 50 ms instead of the 3 s a new Ray actor costs (worker spawn plus
imports). The process is still fresh (docs/architecture.md §3): thread counts, compile caches and
allocator state start clean for every trial, and nothing leaks into the next one.

  - In the child, `faulthandler` writes `fault.log` in the trial's folder when native code
    kills the process (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL): the signal and the Python
    stack. The child dies with its forkserver (PR_SET_PDEATHSIG), so a stopped search
    leaves no orphan running.
  - The parent polls the child's wall time and resident memory every 50 ms. Past
    `limits.trial_timeout_s` or `limits.trial_memory_mb` it writes `tuner-fault.json`
    (status `timeout` or `oom`, and why) and SIGKILLs the child, before the machine swaps
    or the kernel's OOM killer picks a victim. The watchdog lives outside the measured
    process, so it neither competes with the timed code nor depends on it releasing the GIL.
  - A Python exception in the child comes back as a `failed` result with its traceback;
    a child that died comes back as `classify()` reads `tuner-fault.json` and `fault.log`.
Either way the Ray actor survives and Tune reuses it for the next trial."""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import re
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tuner.core.env import measurement_priority
from tuner.core.errors import last_line, one_line
from tuner.core.schema import TrialStatus

MARKER = "tuner-fault.json"
FAULT_LOG = "fault.log"
POLL_S = 0.05
# Imported once by the forkserver, so that every forked trial starts with them loaded.
# ray is there because a forked child re-imports the parent's __main__ (a Ray worker's is
# ray's default_worker.py), which is instant once ray is loaded.
PRELOAD = ["ray", "torch", "tuner.trial.evaluate"]


def default_timeout_s(time_budget_minutes: float | None, trials: int) -> float:
    """5x a trial's share of the time budget, at least 120 s (a cold inductor build can take a
    minute); 600 s without a budget."""
    if not time_budget_minutes:
        return 600.0
    return max(120.0, 5 * time_budget_minutes * 60 / max(1, trials))


def default_memory_mb() -> float:
    """80% of the memory available now: a trial is stopped well before the box swaps."""
    import psutil

    return 0.8 * psutil.virtual_memory().available / 2**20


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the forkserver) exits."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(conn: Connection, folder: str, target: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    _die_with_parent()
    nice = measurement_priority()
    with open(Path(folder) / FAULT_LOG, "w") as log:
        faulthandler.enable(file=log, all_threads=True)
        try:
            out = target(*args)
        except Exception as e:  # what evaluate did not take for a runtime's refusal: `error`, traceback kept
            out = {"status": TrialStatus.ERROR, "error": one_line(e)}
            out["traceback"] = traceback.format_exc()
        faulthandler.disable()
    conn.send({**out, "nice": nice})
    conn.close()


def fresh_process(
    target: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
    folder: str | Path,
    timeout_s: float | None,
    memory_mb: float | None,
) -> dict[str, Any]:
    """`target(*args)` in a fresh forked process, watched as described above. Returns its
    result dict, or a `status`/`error`/`traceback` dict when it raised or died."""
    import psutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # takes effect when the forkserver starts (once)
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, str(folder), target, args), daemon=True)
    proc.start()
    send.close()
    started, peak = time.monotonic(), 0.0
    try:
        while True:
            if receive.poll(POLL_S):
                out: dict[str, Any] = receive.recv()
                proc.join()
                return out
            if not proc.is_alive():
                break
            elapsed = time.monotonic() - started
            try:
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue  # exiting: is_alive() says so on the next turn
            peak = max(peak, rss)
            if timeout_s and elapsed > timeout_s:
                _stop(
                    proc,
                    folder,
                    TrialStatus.TIMEOUT,
                    f"still running after {timeout_s:.0f} s (limits.trial_timeout_s)",
                    peak,
                )
                break
            if memory_mb and rss > memory_mb:
                detail = f"resident memory {rss:.0f} MB passed the {memory_mb:.0f} MB cap (limits.trial_memory_mb)"
                _stop(proc, folder, TrialStatus.OOM, detail, peak)
                break
    except EOFError:
        pass  # the child died between poll() and recv()
    finally:
        receive.close()
        if proc.is_alive():  # the actor is being stopped (search interrupted): take the child along
            proc.kill()
        proc.join()
    code = proc.exitcode
    how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
    return classify(folder, f"trial process ended without a result ({how})")


def _stop(proc: Any, folder: Path, status: TrialStatus, detail: str, peak_mb: float) -> None:
    (folder / MARKER).write_text(json.dumps({"status": status, "error": detail, "peak_rss_mb": peak_mb}))
    proc.kill()
    proc.join()


def classify(folder: str | Path | None, error_text: str) -> dict[str, Any]:
    """Status, one-line error and full text for a trial whose process raised or died."""
    folder = Path(folder) if folder else None
    if folder is not None and (folder / MARKER).exists():
        marker = json.loads((folder / MARKER).read_text())
        return {**marker, "traceback": marker["error"] + "\n\n" + error_text}
    log = (folder / FAULT_LOG).read_text(errors="replace") if folder and (folder / FAULT_LOG).exists() else ""
    fatal = re.search(r"Fatal Python error: (\w[\w ]*)", log)
    if fatal:
        return {
            "status": TrialStatus.FAILED,
            "error": f"trial process crashed: {fatal.group(1).strip()} (native code; stack in traceback.txt)",
            "traceback": log + "\n\n" + error_text,
        }
    first = last_line(error_text) or "trial errored"
    if "worker process has died" in error_text or "actor died" in error_text or "without a result" in error_text:
        first = "trial process died (no fault log: killed from outside, e.g. the kernel's OOM killer?)"
    return {"status": TrialStatus.FAILED, "error": first, "traceback": error_text}
