"""The serving search's result against the services it should beat, measured in one run with
the same LoadGen settings (docs/benchmarks.md, "Serving search"):

    default   the pick's default service (what `tuner serve` runs without flags: its batch
              size, one replica of its threads, half its p50 as the batch wait)
    tuned     the serving search's winner (recommended.yaml's `serving:` section)
    grid      a hand grid on the pick: 3 batch waits x 2 replica layouts x 3 max batches,
              `max_ongoing_requests` twice the batch

Every service is deployed under one Ray Serve (HAProxy, loopback), measured with the same
LoadGen settings (the search's own, its space's `serving:` section, unless `--min-queries` /
`--max-steps` say otherwise) and deleted, in a shuffled order, `--rounds` times; the figure
per service is its median over rounds.

    .venv/bin/python benchmarks/serve_tuning.py OUTPUT_DIR [--rounds 1] [--waits-ms 2,5,10]
        [--layouts 1x2,2x1] [--batches 2,4,8] [--at-qps 12.2,15.9]

`--at-qps`: instead of each service's own bisection, run each at these fixed target rates,
lowest first, until one misses the bound; a service's figure is the highest rate it met
(0: none). With the default service's QPS at the bound and 1.3x it, this says whether any
service of the grid beats the default service at all, and by the issue's margin, at a cost
of about one LoadGen run per service.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from pathlib import Path

import yaml

from tuner.core.env import measurement_env, quiet_logs, service_env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", type=Path, help="a `search --scenario server` output folder")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--waits-ms", default="2,5,10")
    p.add_argument("--layouts", default="1x2,2x1")
    p.add_argument("--batches", default="2,4,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-queries", type=int, help="LoadGen's fewest queries per run (default: the search's)")
    p.add_argument("--max-steps", type=int, help="target rates per service (default: the search's)")
    p.add_argument("--at-qps", help="fixed target rates, comma-separated (server scenario; see above)")
    a = p.parse_args()
    service_env()
    measurement_env()
    quiet_logs()
    import ray

    from tuner.config.space import SearchSpace
    from tuner.search.serving import SERVING_STATE, Candidate, serve_port
    from tuner.serve.tuning import knobs, measure_service

    out = a.output.resolve()
    settings = SearchSpace.load(out / "space.yaml").serving
    settings = settings.model_copy(update={k: v for k, v in (("min_queries", a.min_queries),
                                                             ("max_steps", a.max_steps)) if v})  # fmt: skip
    cands = [Candidate(**c) for c in json.loads((out / SERVING_STATE).read_text())["candidates"]]
    served = (yaml.safe_load((out / "recommended.yaml").read_text()) or {}).get("serving")
    if not served:
        raise SystemExit(f"{out}: recommended.yaml has no `serving:` section (a --scenario server search that met "
                         "its bound writes one)")

    pick = cands[0]
    services = {"default": pick.spec(pick.default, "/default")}
    winner = next(c for c in cands if c.label == served["variant"])
    services["tuned"] = winner.spec(served["knobs"], "/tuned")
    for w in a.waits_ms.split(","):
        for layout in a.layouts.split(","):
            for b in a.batches.split(","):
                name = f"grid-{layout}-b{b}-w{w}"
                point = {"variant": 0, "max_batch_size": int(b), "batch_wait_ms": float(w), "layout": layout,
                         "ongoing_per_batch": 2}  # fmt: skip
                services[name] = pick.spec(knobs(point), f"/{name}")
    ray.init(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    port = serve_port()
    figures: dict[str, list[float]] = {n: [] for n in services}
    p99: dict[str, list[float]] = {n: [] for n in services}
    began = time.time()
    rng = random.Random(a.seed)
    logs = Path("/tmp") / f"serve-tuning-{int(began)}"
    print(f"{len(services)} services x {a.rounds} round(s), scenario {settings.scenario}, "
          f"p99 <= {settings.latency_bound_ms:g} ms, LoadGen >= {settings.duration_s:g} s and >= "
          f"{settings.min_queries} queries per run, <= {settings.max_steps} rates per service", flush=True)  # fmt: skip
    rates = sorted(float(q) for q in a.at_qps.split(",")) if a.at_qps else [None]
    for r in range(a.rounds):
        order = list(services)
        rng.shuffle(order)
        for n in order:
            best, best_p99, tried = 0.0, float("nan"), []
            for i, q in enumerate(rates):
                m = measure_service(services[n], f"{n}-{r}-{i}", port, settings, logs / f"{n}-{r}-{i}", lambda s: None,
                                    target_qps=q)  # fmt: skip
                tried += [f"{s.target_qps:.1f} QPS: p99 {s.p99_ms:.1f} ms"
                          f"{'' if s.n_failed == 0 else f', {s.n_failed} failed'}" for s in m.outcome.steps]
                if m.objective() <= 0:
                    break
                best, best_p99 = (q or m.objective()), m.outcome.result.p99_ms if m.outcome.result else float("nan")
            figures[n].append(best)
            p99[n].append(best_p99)
            print(f"  round {r + 1} {n:22s} {best:7.1f}  p99 {best_p99:6.1f} ms  [{'; '.join(tried)}]  "
                  f"({services[n].summary})", flush=True)  # fmt: skip
    ray.shutdown()
    med = {n: statistics.median(v) for n, v in figures.items()}
    grid = {n: v for n, v in med.items() if n.startswith("grid-")}
    best = max(grid, key=grid.__getitem__)
    unit = "QPS at the bound" if settings.scenario == "server" else "images/s"
    print(f"\n{unit}, median of {a.rounds} round(s), {time.time() - began:.0f} s:")
    print(f"  default (pick {pick.label})   {med['default']:7.1f}")
    print(f"  tuned ({winner.label}, {services['tuned'].summary})   {med['tuned']:7.1f}")
    print(f"  best of the hand grid: {best}   {grid[best]:7.1f}")
    if med["default"] > 0:
        print(f"  tuned / default     {med['tuned'] / med['default']:.2f}x   (target >= 1.3x)")
    if grid[best] > 0:
        print(f"  tuned / best grid   {med['tuned'] / grid[best]:.2f}x   (target >= 1.0x)")
    print("  grid: " + ", ".join(f"{n.removeprefix('grid-')} {v:.1f}" for n, v in sorted(grid.items())))


if __name__ == "__main__":
    main()
