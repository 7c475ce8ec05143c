"""`python -m tuner report`: a logged search read back from MLflow (the trial table, the
Pareto front, the recommendation), another search compared with it, `--format`, and
`--sync` of what a search kept while the store was down. Imports no torch."""

from __future__ import annotations

import argparse
from typing import Any

from tuner.core.env import quiet_logs, service_env
from tuner.core.errors import EXIT_OK, ConfigError, one_line
from tuner.outputs import tables
from tuner.outputs.compare import comparability, compare, render
from tuner.tracking.store import Tracker, check_reachable, default_tracking_uri


def run(args: argparse.Namespace) -> int:
    service_env()
    quiet_logs()
    if args.sync is not None:
        from tuner.tracking.sync import sync

        if args.run_id or args.experiment or args.tracking_uri:
            raise ConfigError("--sync takes the store, experiment and run from OUTPUT_DIR/search.json; drop the rest")
        n = sync(args.sync)
        print(f"synced {args.sync}: {n} trial(s) uploaded")
        return EXIT_OK
    uri = args.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    run, tracker = _find_search(uri, args.run_id, args.experiment, "--run-id")
    df = tables.table_from_runs(tracker.children(run.info.run_id))
    tags = run.data.tags
    if args.baseline_run_id:
        base_run, base_tracker = _find_search(uri, args.baseline_run_id, None, "--baseline-run-id")
        base = tables.table_from_runs(base_tracker.children(base_run.info.run_id))
        cmp = compare(df, base)
        if args.format != "table":
            print(render(cmp, args.format))
            return EXIT_OK
        print(f"search {run.info.run_id} against baseline search {base_run.info.run_id}, per config:")
        for warn in comparability(tags, base_run.data.tags):
            print(f"  note: {warn}")
        print(render(cmp, "markdown"))
        return EXIT_OK
    if args.format != "table":
        print(render(df, args.format))
        return EXIT_OK
    print(f"search {run.info.run_id} ({tracker.experiment}), {len(df)} trials")
    print(f"  weights: {tags.get('tuner.weights', '?')}\n  data:    {tags.get('tuner.data', '?')}")
    print(tables.format_table(df, "\nAll trials:"))
    if "pareto" in df:
        print(tables.format_table(df[df["pareto"]], "\nPareto front:"))
    rec = df[df["recommended"]] if "recommended" in df else df.iloc[:0]
    print(f"\nRECOMMENDED: {rec.iloc[0]['label']}" if len(rec) else "\nno recommendation")
    return EXIT_OK


def _find_search(uri: str, run_id: str | None, experiment: str | None, flag: str) -> tuple[Any, Any]:
    """The parent run `run_id`, or the latest search of `experiment` (default: the latest tuner/*)."""
    from mlflow.tracking import MlflowClient

    if run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = MlflowClient(uri).get_run(run_id)
        except MlflowException as e:
            raise ConfigError(f"{flag} {run_id}: not found in {uri}: {one_line(e)}") from None
        exp_name = MlflowClient(uri).get_experiment(run.info.experiment_id).name
        if experiment and experiment != exp_name:
            raise ConfigError(
                f"{flag} {run_id} belongs to experiment `{exp_name}`, which conflicts with "
                f"--experiment {experiment}; give one of the two"
            )
        if run.data.tags.get("tuner.kind") != "search":
            raise ConfigError(f"{flag} {run_id}: not a search's parent run (a trial's child run?)")
        return run, Tracker(uri, exp_name, create=False)
    exp_name = experiment or _latest_tuner_experiment(uri)
    tracker = Tracker(uri, exp_name, create=False)
    run = tracker.latest_parent()
    if run is None:
        raise ConfigError(f"experiment `{exp_name}` in {uri} has no tuner search yet")
    return run, tracker


def _latest_tuner_experiment(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    exps = [e for e in MlflowClient(uri).search_experiments() if e.name.startswith("tuner/")]
    if not exps:
        raise ConfigError(
            f"no tuner experiment in {uri}; run `python -m tuner search MODEL` first, or pass --experiment"
        )
    return max(exps, key=lambda e: e.last_update_time or 0).name
