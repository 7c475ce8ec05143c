"""`python -m tuner report`: a logged search read back from MLflow (the trial table, the
Pareto front, the recommendation), another search compared with it, `--format`, and
`--sync` of what a search kept while the store was down. Imports no torch."""

from __future__ import annotations

import argparse

from tuner.core.env import quiet_logs, service_env
from tuner.core.errors import EXIT_OK, ConfigError
from tuner.outputs import tables
from tuner.outputs.compare import comparability, compare, render
from tuner.tracking.searches import find_search
from tuner.tracking.store import check_reachable, default_tracking_uri


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
    run, tracker = find_search(uri, args.run_id, args.experiment, "--run-id")
    df = tables.table_from_runs(tracker.children(run.info.run_id))
    tags = run.data.tags
    if args.baseline_run_id:
        base_run, base_tracker = find_search(uri, args.baseline_run_id, None, "--baseline-run-id")
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
    if "confirmed_p50_ms" in df and df["confirmed_p50_ms"].notna().any():
        print("(confirmed finalists: `--format csv` gives confirmed_<figure> and its 95% interval, "
              "confirmed_<figure>_low and _high; searches before tuner named those *_ci_low/_ci_high)")  # fmt: skip
    return EXIT_OK
