"""`python -m tuner ceiling [--remeasure]`: this machine's ceiling per precision, from the
cache (measured first where missing), or measured again now; each figure with the probe
that gave it, when it was measured and how busy the machine was then (measure/ceiling.py)."""

from __future__ import annotations

import argparse

from tuner.core.errors import EXIT_OK


def run(args: argparse.Namespace) -> int:
    from tuner.measure.ceiling import BUSY_CORES, cache_path, entries_for, read_cache
    from tuner.measure.hardware import detect

    hw = detect()
    cached = {} if args.remeasure else read_cache(hw.fingerprint)
    print(f"machine: {hw.cpu_model}, {hw.cores} cores, gpu {hw.gpu}, torch {hw.torch_version}", flush=True)
    print(f"cache:   {cache_path(hw.fingerprint)}", flush=True)
    entries = entries_for(hw, remeasure=args.remeasure)
    rows = [("precision", "GFLOP/s", "probe", "measured at", "busy cores", "from")]
    for p, e in entries.items():
        origin = "cache" if cached.get(p) == e else "measured now"
        if origin != "cache" and e.busy_cores > BUSY_CORES:
            origin += " (busy: not cached)"
        rows.append((p, f"{e.gflops:.1f}", e.probe, e.measured_at, f"{e.busy_cores:.2f}", origin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells).rstrip())
    return EXIT_OK
