"""A trial's process may crash, hang or eat the machine's memory; the search must survive it.

Inside the trial process (`TrialGuard`, entered by `trial.run_trial`):
  - `faulthandler` writes `fault.log` in the trial's folder when native code kills the
    process (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL): the signal and the Python stack;
  - a watchdog thread checks the wall time and the process's resident memory every 50 ms.
    Past `limits.trial_timeout_s` or `limits.trial_memory_mb` it writes `tuner-fault.json`
    (status `timeout` or `oom`, and why) and SIGKILLs its own process, before the machine
    swaps or the kernel's OOM killer picks a victim.
Either way Ray sees a dead actor and Tune calls `on_trial_error` in the driver, where
`classify()` reads those two files from the trial's folder and turns them into a status.
A trial that raises a Python exception is handled by Tune (its traceback is in error.txt).

`inject()` and `slowed()` are the test-only fault knob (`inject_faults:` in a space file):
a trial whose config matches raises, aborts, hangs, allocates memory or runs slower, so
every path (and the nightly regression alarm) is tested for real.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

MARKER = "tuner-fault.json"
FAULT_LOG = "fault.log"
POLL_S = 0.05


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


class TrialGuard:
    """Context manager for one trial process. `folder` is the trial's own folder."""

    def __init__(self, folder: str | Path, timeout_s: float | None, memory_mb: float | None):
        self.folder = Path(folder)
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self._stop = threading.Event()
        self._log: IO[str] | None = None
        self.peak_mb = 0.0

    def __enter__(self) -> TrialGuard:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._log = open(self.folder / FAULT_LOG, "w")  # noqa: SIM115 (open until the process ends)
        faulthandler.enable(file=self._log, all_threads=True)
        self._started = time.monotonic()
        threading.Thread(target=self._watch, name="tuner-watchdog", daemon=True).start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        faulthandler.disable()
        if self._log is not None:
            self._log.close()

    def _watch(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.wait(POLL_S):
            elapsed = time.monotonic() - self._started
            rss = proc.memory_info().rss / 2**20
            self.peak_mb = max(self.peak_mb, rss)
            if self.timeout_s and elapsed > self.timeout_s:
                self._kill("timeout", f"still running after {self.timeout_s:.0f} s (limits.trial_timeout_s)")
            if self.memory_mb and rss > self.memory_mb:
                self._kill(
                    "oom",
                    f"resident memory {rss:.0f} MB passed the {self.memory_mb:.0f} MB cap (limits.trial_memory_mb)",
                )

    def _kill(self, status: str, detail: str) -> None:
        (self.folder / MARKER).write_text(json.dumps({"status": status, "error": detail, "peak_rss_mb": self.peak_mb}))
        os.kill(os.getpid(), signal.SIGKILL)


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
            "status": "failed",
            "error": f"trial process crashed: {fatal.group(1).strip()} (native code; stack in traceback.txt)",
            "traceback": log + "\n\n" + error_text,
        }
    lines = [ln for ln in error_text.strip().splitlines() if ln.strip()]
    first = lines[-1] if lines else "trial errored"
    if "worker process has died" in error_text or "actor died" in error_text:
        first = "trial process died (no fault log: killed from outside, e.g. the kernel's OOM killer?)"
    return {"status": "failed", "error": first[:500], "traceback": error_text}


def _matches(rule: Any, variant: dict[str, Any]) -> bool:
    return all(str(variant.get(k)) == str(v) for k, v in rule.when.items())


def slowed(built: Any, rules: Any, variant: Any) -> Any:
    """Test-only: a `slow` rule adds `delay_ms` to every call of the built variant (how the
    nightly tests cause a real regression, in trials and confirmation alike)."""
    delay = sum(r.delay_ms for r in rules if r.action == "slow" and _matches(r, variant.to_dict())) / 1000
    if delay > 0:
        run = built.run

        def slow_run(x: Any) -> Any:
            time.sleep(delay)
            return run(x)

        built.run = slow_run
    return built


def inject(rules: list[Any], variant: dict[str, Any]) -> None:
    """Test-only: act on the first `inject_faults` rule whose `when` matches the variant."""
    for rule in rules:
        if rule.action != "slow" and _matches(rule, variant):
            if rule.action == "raise":
                raise RuntimeError("injected fault: raise (inject_faults)")
            if rule.action == "abort":
                os.abort()
            if rule.action == "hang":
                while True:
                    time.sleep(1)
            if rule.action == "allocate":
                import torch

                hoard = []
                for _ in range(rule.allocate_mb // 64):
                    hoard.append(torch.ones(64 * 2**20 // 4))  # touched, so resident
                    time.sleep(0.01)
            return
