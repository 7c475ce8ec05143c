"""`python -m tuner nightly JOBFILE.yaml`: unattended tuning with a history (docs/nightly.md).

For each model of the job, one search (search/run.py; the model's part is nightly/model.py),
plus:

1. **History.** The previous nightly search of the same model on the same hardware
   (`hw.fingerprint`) is read from MLflow: its champion (the accepted config, with the
   figures it was accepted on) and its Pareto front.
2. **Regression check, before any trial.** With Ray up and the reference ready (the
   search's `before_search` hook), the champion is re-measured with the confirmation
   protocol (fresh processes, `confirm.rounds` rounds, bootstrap interval) and compared
   with its accepted figures. A change is a regression when it is worse by more than
   max(the job's relative threshold, the relative half-width of either interval).
   Quality is compared on the champion's trial in this search (it is enqueued).
3. **Warm start.** The champion and the previous Pareto configs are enqueued right after
   the baseline (`search.enqueue`), so the sampler starts from the known front.
4. **Champion.** The new recommendation becomes the champion when the old one no longer
   meets the constraints, or when the new one is significantly better (their confirmed
   intervals, measured in the same interleaved rounds, do not overlap); otherwise the old
   champion stays, with the figures it was accepted on (so slow drift still shows).
   Recorded as parent-run tags/metrics, and as the registry alias `champion`.
5. **Reports:** the terminal, `nightly-report.md` / `nightly-report.json` in the run's
   folder, and tags on each parent run (`tuner.regression`, `tuner.warm_start_from`, ...).

Unattended: a machine-wide lock (a second run exits with EXIT_LOCKED), `--resume` after an
interrupt (each model's search resumes from its output folder), the job's total time
budget, and a log file per run (`nightly.log`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from tuner.config.job import Job, ModelJob, load_job
from tuner.core.console import say
from tuner.core.env import measurement_env, quiet_logs, service_env
from tuner.core.errors import EXIT_LOCKED, EXIT_NO_RESULT, EXIT_OK, EXIT_REGRESSION, ConfigError, TunerError
from tuner.nightly.report import write_report
from tuner.nightly.verdict import ModelNight

NIGHTLY_STATE = "nightly-state.json"
MODEL_RESULT = "nightly-model.json"  # in each model's folder: its result, once it has one


class _Tee:
    """stdout and the run's log file at once; anything else (encoding, fileno, isatty) is the
    terminal's, for the libraries that ask."""

    def __init__(self, *streams: IO[str]):
        self.streams = streams

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams[0], name)

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def lock_path() -> Path:
    """Machine-wide: two nightly runs must not measure on one machine at the same time."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuner"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / "nightly.lock"


def run_job(path: Path, resume: bool = False, only_class: str | None = None, run_dir: Path | None = None) -> int:
    """The job in `path`. With `only_class` and `run_dir` (how `_run_classes` starts one
    process per hardware class; "" is the driver's own class), only that class's models, into
    the parent's run folder, under the parent's lock, with no report of their own."""
    from filelock import FileLock, Timeout

    service_env()
    measurement_env()
    quiet_logs()
    path = path.resolve()
    job = load_job(path)
    if (only_class is None) != (run_dir is None):
        raise ConfigError("--only-class and --run-dir go together: they start one hardware class's process of a run")
    if only_class is not None and run_dir is not None:
        state = json.loads((run_dir / NIGHTLY_STATE).read_text())
        _run_models(job, path, run_dir, _by_class(job)[only_class], _deadline(job, state), resume)
        return EXIT_OK
    lock = FileLock(str(lock_path()))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"error: another nightly run holds the lock {lock_path()} (one nightly run per machine, so that "
            "their measurements do not disturb each other). Try again when it has finished.",
            file=sys.stderr,
        )
        return EXIT_LOCKED
    try:
        return _run_locked(job, path, resume)
    finally:
        lock.release()


def _by_class(job: Job) -> dict[str, list[ModelJob]]:
    """The job's models by hardware class ("": the driver's own), in job order."""
    groups: dict[str, list[ModelJob]] = {}
    for mj in job.models:
        groups.setdefault(mj.hardware or "", []).append(mj)
    return groups


def _deadline(job: Job, state: dict[str, Any]) -> float | None:
    return float(state["started"]) + job.time_budget_minutes * 60 if job.time_budget_minutes else None


def _run_locked(job: Job, path: Path, resume: bool) -> int:
    root = Path(job.output).resolve()
    root.mkdir(parents=True, exist_ok=True)
    run_dir = _last_unfinished(root) if resume else None
    if resume and run_dir is None:
        raise ConfigError(f"--resume: no interrupted nightly run under {root}")
    run_dir = run_dir or root / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / NIGHTLY_STATE
    state: dict[str, Any] = (
        json.loads(state_file.read_text()) if state_file.exists() else {"job": str(path), "started": time.time()}
    )
    state["status"] = "running"
    state_file.write_text(json.dumps(state, indent=2))
    results: list[ModelNight] = []
    groups = _by_class(job)
    with open(run_dir / "nightly.log", "a") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        say(f"nightly: {path} -> {run_dir} (log: {run_dir / 'nightly.log'})")
        try:
            if len(groups) > 1:
                _run_classes(path, run_dir, groups, resume)
                results = [_result_of(run_dir, mj) for mj in job.models]
            else:
                results = _run_models(job, path, run_dir, job.models, _deadline(job, state), resume)
        except KeyboardInterrupt:
            state["status"] = "interrupted"
            state_file.write_text(json.dumps(state, indent=2))
            say(f"nightly interrupted; resume with: python -m tuner nightly {path} --resume")
            raise
        finally:
            if results:
                write_report(results, run_dir, time.time() - state["started"], job.time_budget_minutes)
    state["status"] = "finished"
    state_file.write_text(json.dumps(state, indent=2))
    if any(r.regression for r in results):
        return EXIT_REGRESSION
    return EXIT_OK if all(r.recommended for r in results) else EXIT_NO_RESULT


def _run_models(
    job: Job, path: Path, run_dir: Path, models: list[ModelJob], deadline: float | None, resume: bool
) -> list[ModelNight]:
    """The models one after another (one hardware class); each one's result is also written
    to its folder (`nightly-model.json`), which `--resume` and `_run_classes` read."""
    from tuner.nightly.model import run_model

    results = []
    for mj in models:
        done = run_dir / mj.folder / MODEL_RESULT
        if done.exists():
            results.append(_result_of(run_dir, mj))
            say(f"\n== {mj.model}: already done in this run")
            continue
        try:
            res = run_model(job, mj, path, run_dir / mj.folder, deadline, resume)
        except TunerError as e:
            res = ModelNight(mj.model, mj.hardware, status=f"error: {e}")
            say(f"\n== {mj.model}: error: {e}")
        (run_dir / mj.folder).mkdir(exist_ok=True)
        done.write_text(json.dumps(res.to_json(), indent=2, default=str))
        results.append(res)
    return results


def _run_classes(path: Path, run_dir: Path, groups: dict[str, list[ModelJob]], resume: bool) -> None:
    """One process per hardware class, all at once (each runs its class's models in turn, on
    that class's nodes); their lines are printed as they come, prefixed with the class."""
    procs = {}
    for name in groups:
        cmd = [sys.executable, "-m", "tuner", "nightly", str(path), "--only-class", name, "--run-dir", str(run_dir)]
        procs[name] = subprocess.Popen(
            cmd + (["--resume"] if resume else []),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
    say(f"running {len(procs)} hardware classes at the same time: {', '.join(n or '(this machine)' for n in procs)}")
    out = sys.stdout

    def relay(name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(f"[{name or 'here'}] {line}")

    threads = [threading.Thread(target=relay, args=(n, p), daemon=True) for n, p in procs.items()]
    for t in threads:
        t.start()
    try:
        for p in procs.values():
            p.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached the children too: let them save their state
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
    for name, p in procs.items():
        if p.returncode not in (0, None):
            say(f"hardware class {name or '(this machine)'}: its process exited with {p.returncode}")
        if p.returncode == 130:
            raise KeyboardInterrupt


def _result_of(run_dir: Path, mj: ModelJob) -> ModelNight:
    """A model's result as its process wrote it (`MODEL_RESULT`), or why there is none."""
    done = run_dir / mj.folder / MODEL_RESULT
    if done.exists():
        return ModelNight.from_json(json.loads(done.read_text()))
    return ModelNight(mj.model, mj.hardware, status="error: its hardware class's process ended early")


def _last_unfinished(root: Path) -> Path | None:
    runs = sorted(p for p in root.iterdir() if (p / NIGHTLY_STATE).exists())
    for p in reversed(runs):
        if json.loads((p / NIGHTLY_STATE).read_text()).get("status") != "finished":
            return p
    return None
