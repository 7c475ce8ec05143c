"""Can the tuner's numbers be trusted? Prints three tables (not a test: nothing is asserted).

    python benchmarks/measurement.py                       # all sections, resnet50
    python benchmarks/measurement.py --sections repeatability --repeats 5
    python benchmarks/measurement.py --sections ranking,overhead --searches 3 --trials 12

repeatability  the same config measured N times, each in a fresh process
               (`python -m tuner measure --json`): the CV of the p50 across processes.
ratio          N repeats of the confirmation protocol on two configs (the int8 config every
               resnet50 search recommends, against the baseline): interleaved rounds, a fresh
               process each. The CV across repeats of each pooled p50 and of their ratio,
               which is how the tool compares configs.
ranking        the same search repeated: do the searches recommend the same config, or
               configs whose confirmed intervals overlap?
overhead       the wall-time split of each search: build, measure, and everything else
               per trial (process start, model load, accuracy pass, MLflow logging), from
               the searches' trials.csv; plus the fixed cost per search.

Run it on a quiet machine; it takes about 1 minute per repeat and 5 minutes per search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from tuner.outputs.tables import read_trials

BASELINE = {"precision": "fp32", "quantization": "none", "batch_size": 1, "compile": "eager", "layout": "contiguous"}
INT8 = {**BASELINE, "quantization": "static_int8", "compile": "torchscript"}


def tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, capture_output=True, text=True)


def repeatability(model: str, repeats: int, config: Path | None, work: Path, space: Path | None = None) -> None:
    if config is None:
        import os

        config = work / "variant.yaml"
        config.write_text(yaml.safe_dump({"variant": {**BASELINE, "threads": len(os.sched_getaffinity(0))}}))
    rows = []
    for i in range(repeats):
        r = tuner(
            "measure", model, "--config", str(config), "--json", *(["--space", str(space)] if space else []), cwd=work
        )
        if r.returncode != 0:
            sys.exit(f"measure failed:\n{r.stderr[-2000:]}")
        fig = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "run": i + 1,
                "p50_ms": fig["latency_p50_ms"],
                "p90_ms": fig["latency_p90_ms"],
                "n": int(fig["latency_n"]),
                "stable": fig["stable"],
                "busy_cores": max(fig["busy_cores_start"], fig["busy_cores_end"]),
            }
        )
        print(f"  run {i + 1}/{repeats}: p50 {fig['latency_p50_ms']:.2f} ms", flush=True)
    df = pd.DataFrame(rows)
    cv = statistics.stdev(df["p50_ms"]) / statistics.mean(df["p50_ms"]) if len(df) > 1 else float("nan")
    label = yaml.safe_load(config.read_text()).get("label") or "the baseline (fp32 eager bs1)"
    print(f"\nRepeatability: {model}, {label}, {repeats} fresh processes")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"CV of p50 across processes: {100 * cv:.2f}%  (target <= 3% on a quiet box)\n")


def ratio(model: str, repeats: int, rounds: int) -> None:
    """The confirmation protocol (confirm_ray.ray_confirm) on [INT8, BASELINE], `repeats` times."""
    import os

    import numpy as np
    import ray

    from tuner.config.space import SearchSpace, resolve_space_file
    from tuner.core.env import measurement_env, quiet_logs, service_env
    from tuner.core.variant import Variant
    from tuner.inputs.models import ModelSpec, resolve_weights
    from tuner.inputs.reference import reference_for
    from tuner.measure.ceiling import for_hardware
    from tuner.measure.hardware import detect
    from tuner.search.cluster import place
    from tuner.search.confirm_ray import ray_confirm
    from tuner.trial.evaluate import TrialSettings

    service_env()
    measurement_env()
    quiet_logs()
    cores = len(os.sched_getaffinity(0))
    space = SearchSpace.load(resolve_space_file(model, None))
    ref = reference_for(resolve_weights(ModelSpec(model, "auto", 0)), space.eval, None)
    settings = TrialSettings(space.timing, space.eval.screen_min_cosine, for_hardware(detect()), timeout_s=300)
    pair = [Variant.from_dict({**INT8, "threads": cores}), Variant.from_dict({**BASELINE, "threads": cores})]
    rows = []
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    klass, _ = place(None)
    try:
        for k in range(repeats):
            got = ray_confirm(ref, settings, klass)(pair, rounds)
            p50 = [float(np.median(np.concatenate([m["times_s"] for m in got[i]]))) * 1e3 for i in (0, 1)]
            rows.append({"repeat": k + 1, "int8_p50_ms": p50[0], "baseline_p50_ms": p50[1], "speedup": p50[1] / p50[0]})
            print(f"  repeat {k + 1}/{repeats}: int8 {p50[0]:.2f} ms, baseline {p50[1]:.2f} ms", flush=True)
    finally:
        ray.shutdown()
    df = pd.DataFrame(rows)
    print(f"\nRatio: {model}, {pair[0].label} against {pair[1].label}, {rounds} interleaved round(s) per repeat")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for col in ("int8_p50_ms", "baseline_p50_ms", "speedup"):
        print(f"CV of {col} across repeats: {100 * df[col].std() / df[col].mean():.2f}%")
    print()


def run_searches(model: str, n: int, trials: int, work: Path) -> list[tuple[Path, float]]:
    out = []
    for k in range(n):
        dest = work / f"search-{k + 1}"
        start = time.perf_counter()
        r = tuner("search", model, "--trials", str(trials), "--output", str(dest), cwd=work)
        wall = time.perf_counter() - start
        if r.returncode != 0:
            sys.exit(f"search {k + 1} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        print(f"  search {k + 1}/{n}: {wall / 60:.1f} min", flush=True)
        out.append((dest, wall))
    return out


def ranking(searches: list[tuple[Path, float]]) -> None:
    rows = []
    for dest, _ in searches:
        rec = yaml.safe_load((dest / "recommended.yaml").read_text())
        c = rec.get("confirmed", {})
        rows.append(
            {
                "search": dest.name,
                "recommended": rec["label"],
                "confirmed_p50_ms": c.get("confirmed_p50_ms", float("nan")),
                "ci_low": c.get("confirmed_p50_ms_low", float("nan")),
                "ci_high": c.get("confirmed_p50_ms_high", float("nan")),
            }
        )
    df = pd.DataFrame(rows)
    same = df["recommended"].nunique() == 1
    overlap = df["ci_low"].max() <= df["ci_high"].min()
    print("\nRanking stability: repeated searches")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    verdict = "same config" if same else ("different configs, overlapping intervals" if overlap else "DISAGREE")
    print(f"verdict: {verdict}\n")


def overhead(searches: list[tuple[Path, float]]) -> None:
    rows = []
    for dest, wall in searches:
        t = read_trials(dest / "trials.csv")
        t = t[t["status"] == "ok"]
        per_trial = t["process_wall_s"] + t["mlflow_s"] - t["build_s"] - t["measure_s"]
        # As the user sees it: time from one trial's end to the next one's, minus its work.
        between = (t["finished_at"].diff() - t["build_s"] - t["measure_s"]).dropna()
        rows.append(
            {
                "search": dest.name,
                "wall_s": wall,
                "trials": len(t),
                "build_s": t["build_s"].sum(),
                "measure_s": t["measure_s"].sum(),
                "mlflow_s": t["mlflow_s"].sum(),
                "overhead_per_trial_s (median)": per_trial.median(),
                "overhead_per_trial_s (max)": per_trial.max(),
                "end_to_end_overhead_s (median)": between.median(),
                "outside_trials_s": wall - (t["process_wall_s"] + t["mlflow_s"]).sum(),
            }
        )
    print("Overhead: where a search's wall time goes")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(
        "overhead per trial = driver-observed trial time + MLflow logging - build - measure "
        "(process start, model load, accuracy pass); end_to_end = from one trial's end to the "
        "next one's, minus build and measure (adds Tune scheduling and the sampler); "
        "outside_trials = reference, ceiling, Ray start-up, confirmation, outputs.  Target <= 3 s per trial.\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--sections", default="repeatability,ratio,ranking,overhead")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--config", type=Path, help="variant YAML for repeatability (default: the baseline)")
    p.add_argument("--space", type=Path, help="space file whose timing settings repeatability uses")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per ratio repeat")
    p.add_argument("--searches", type=int, default=3)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--workdir", type=Path, default=Path("bench-results") / time.strftime("%Y%m%d-%H%M%S"))
    a = p.parse_args()
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sections = set(a.sections.split(","))
    print(f"benchmark outputs in {work}")
    if "repeatability" in sections:
        repeatability(a.model, a.repeats, a.config.resolve() if a.config else None, work, a.space)
    if "ratio" in sections:
        ratio(a.model, a.repeats, a.rounds)
    if sections & {"ranking", "overhead"}:
        searches = run_searches(a.model, a.searches, a.trials, work)
        if "ranking" in sections:
            ranking(searches)
        if "overhead" in sections:
            overhead(searches)


if __name__ == "__main__":
    main()
