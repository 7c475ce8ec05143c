"""Does a nightly warm start pay? Prints one table (not a test: nothing is asserted).

    python benchmarks/warm_start.py                        # resnet50, 12 trials then 6
    python benchmarks/warm_start.py --model resnet18 --trials 10

Runs the same nightly job twice in a fresh folder and store: first a cold search with
`--trials` trials, then a warm-started one with half as many. For each it computes the
hypervolume of its Pareto front in (p90 latency, throughput) over the configs that meet
the constraints: the area that the front dominates, up to a reference point of 1.1x the
worst latency seen in either run and zero throughput (both axes as measured, one run each;
2-D so that the figure can be checked by hand). Prints both and the ratio warm / cold; the
nightly issue's target is at least 0.90 with half the trials.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from tuner.outputs.tables import read_trials


def hypervolume(points: list[tuple[float, float]], ref_latency: float) -> float:
    """Area dominated by (latency, throughput) points (lower latency, higher throughput is
    better) inside [0, ref_latency] x [0, inf): a sweep over latency."""
    front = sorted(points)  # by latency
    area, best = 0.0, 0.0
    for i, (lat, thr) in enumerate(front):
        best = max(best, thr)
        nxt = front[i + 1][0] if i + 1 < len(front) else ref_latency
        area += best * max(0.0, min(nxt, ref_latency) - lat)
    return area


def run(job: Path, work: Path) -> tuple[pd.DataFrame, float, str]:
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "tuner", "nightly", str(job)], cwd=work, capture_output=True, text=True)
    if r.returncode not in (0, 3):
        sys.exit(f"nightly failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    run_dir = sorted((work / "runs").iterdir())[-1]
    rep = json.loads((run_dir / "nightly-report.json").read_text())["models"][0]
    df = read_trials(Path(rep["output"]) / "trials.csv")
    warm = next((ln for ln in r.stdout.splitlines() if ln.startswith("warm start")), "")
    return df, time.time() - start, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--work", type=Path, default=Path("bench-warm-start"))
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, trials in (("cold", args.trials), ("warm", max(2, args.trials // 2))):
        job = work / f"{name}.yaml"
        job.write_text(yaml.safe_dump({
            "tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "output": str(work / "runs"),
            "models": [{"model": args.model, "weights": "auto", "trials": trials, "time_budget_minutes": 30}],
        }))  # fmt: skip
        print(f"{name}: {trials} trials ...", flush=True)
        df, wall, warm = run(job, work)
        runs.append((name, trials, df, wall, warm))
        time.sleep(1.1)
    feasible = [d[d["status"].eq("ok") & d["feasible"].astype(bool)] for _, _, d, _, _ in runs]
    ref = 1.1 * max(f["latency_p90_ms"].max() for f in feasible)
    print(f"\n{'run':<6}{'trials':>7}{'wall min':>10}{'feasible':>10}{'front':>7}{'hypervolume':>14}  best p90 ms")
    hv = {}
    for (name, trials, df, wall, warm), f in zip(runs, feasible, strict=True):
        hv[name] = hypervolume(list(zip(f["latency_p90_ms"], f["throughput_ips"], strict=True)), ref)
        print(f"{name:<6}{trials:>7}{wall / 60:>10.1f}{len(f):>10}{int(df['pareto'].sum()):>7}{hv[name]:>14.0f}"
              f"  {f['latency_p90_ms'].min():.1f}")  # fmt: skip
        if warm:
            print(f"        {warm}")
    print(f"\nwarm / cold hypervolume: {hv['warm'] / hv['cold']:.3f} (reference point: {ref:.1f} ms, 0 items/s)")


if __name__ == "__main__":
    main()
