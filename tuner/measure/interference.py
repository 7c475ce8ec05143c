"""Interference guard: is anything else using the cores while a trial measures?

Sampled right before timing and right after it, while this process is idle, so whatever
CPU time is used in the window is someone else's: another job, a compile cache warming
up, the driver. `busy_cores` is that use in cores (0.0 = quiet, 1.0 = one core fully
busy); `busy_processes` names the processes above a tenth of a core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

SAMPLE_S = 0.5
BUSY_PROC_CORES = 0.1


@dataclass(frozen=True)
class LoadSample:
    busy_cores: float
    busy_processes: tuple[str, ...]
    loadavg_1m: float


def sample_load(seconds: float = SAMPLE_S) -> LoadSample:
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)  # first call primes the counter
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    total = psutil.cpu_percent(interval=seconds, percpu=True)
    busy = []
    for p in procs:
        try:
            cores = p.cpu_percent(None) / 100.0
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cores >= BUSY_PROC_CORES:
            busy.append(f"{p.info['name']}({p.info['pid']}):{cores:.2f}")
    return LoadSample(sum(total) / 100.0, tuple(sorted(busy)), os.getloadavg()[0])
