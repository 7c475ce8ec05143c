"""The same search on one node and on two nodes of one hardware class (issue: "When one machine
is not enough"), on a real multi-node Ray cluster started on this machine.

    .venv/bin/python benchmarks/cluster_scaling.py --model resnet18 --trials 8 --nodes 1 2

Each run starts its own cluster (`ray.cluster_utils.Cluster`: a head with no CPUs and N nodes
of `--cpus-per-node` CPUs, labelled `tuner.io/hardware=bench`), runs `python -m tuner search`
against it with `--hardware bench`, and stops it. Printed: the search's wall time, the trials
per node (the `tuner.node` tag of each child run = the `node` column of trials.csv), and the
recommendation. On this 2-vCPU box, one CPU per node: two nodes use both cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner.outputs.tables import read_trials  # noqa: E402
from tuner.search.cluster import CLASS_LABEL  # noqa: E402


def one_run(model: str, trials: int, nodes: int, cpus: int, work: Path) -> dict[str, object]:
    from ray.cluster_utils import Cluster

    os.environ.update({"RAY_worker_niceness": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus, labels={CLASS_LABEL: "bench"})
        cmd = [sys.executable, "-m", "tuner", "search", model, "--weights", "random", "--trials", str(trials),
               "--address", cluster.address, "--hardware", "bench", "--output", "out"]  # fmt: skip
        start = time.perf_counter()
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
        wall = time.perf_counter() - start
    finally:
        cluster.shutdown()
    if r.returncode != 0:
        raise SystemExit(f"search on {nodes} node(s) failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    t = read_trials(work / "out" / "trials.csv")
    rec = t[t["recommended"]]
    return {
        "nodes": nodes,
        "wall_s": wall,
        "trials": len(t),
        "ok": int(t["status"].eq("ok").sum()),
        "per_node": t["node"].value_counts().to_dict(),
        "recommended": f"{rec.iloc[0]['label']} on {rec.iloc[0]['node']}" if len(rec) else "none",
        "where": [f"{row.trial} {row.label} -> {row.node}" for row in t.itertuples()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus-per-node", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for n in args.nodes:
        with tempfile.TemporaryDirectory(prefix=f"tuner-cluster-{n}-") as d:
            print(f"searching {args.model}, {args.trials} trials, on {n} node(s) of {args.cpus_per_node} CPU(s) ...",
                  flush=True)  # fmt: skip
            row = one_run(args.model, args.trials, n, args.cpus_per_node, Path(d))
            rows.append(row)
            print(f"  wall {row['wall_s']:.0f} s; {row['ok']}/{row['trials']} ok; per node {row['per_node']}")
            print(f"  recommended {row['recommended']}")
            for line in row["where"]:  # type: ignore[attr-defined]
                print(f"    {line}")
    print("\n| nodes | wall (s) | trials ok | trials per node |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['nodes']} | {row['wall_s']:.0f} | {row['ok']}/{row['trials']} | {row['per_node']} |")
    if len(rows) > 1:
        print(f"\nspeed-up with {rows[-1]['nodes']} nodes: {rows[0]['wall_s'] / rows[-1]['wall_s']:.2f}x")  # type: ignore[operator]


if __name__ == "__main__":
    main()
