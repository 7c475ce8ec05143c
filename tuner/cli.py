"""Command line: `python -m tuner search|measure|report`. Parsing only; the work is elsewhere.

Exit codes: 0 done (a recommendation was made), 1 the search ran but nothing finished ok,
2 bad input (the message names the file, key or flag and what is allowed), 3 (nightly) a
regression was found, 75 (nightly) another nightly run holds the lock, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import TunerError

if TYPE_CHECKING:
    from tuner.space import SearchSpace

EXIT_OK, EXIT_NO_RESULT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner",
        description="Automated inference tuning for PyTorch models.",
        epilog="exit codes: 0 ok, 1 no result, 2 bad input, 3 nightly regression, 75 nightly locked, 130 interrupted",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search the variants of a model and recommend one")
    s.add_argument("model", help="torchvision model name (resnet50, ...) or module.path:factory")
    s.add_argument("--space", help="search-space YAML (default: search_spaces/<model>.yaml, else default.yaml)")
    s.add_argument("--trials", type=int, help="number of trials, baseline included (space default: 24)")
    s.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop starting trials after this long")
    s.add_argument("--objective", choices=["latency", "throughput"], help="what the recommendation optimises")
    s.add_argument("--max-accuracy-drop", type=float, metavar="FRACTION", help="relative drop allowed (0.01 = 1%%)")
    s.add_argument("--max-latency-ms", type=float, metavar="MS", help="p90 latency limit")
    _add_model_args(s)
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default: tuner/<model>)")
    s.add_argument("--output", type=Path, help="output folder (default: ./tuner-results/<model>-<timestamp>)")
    s.add_argument("--address", metavar="RAY_ADDRESS", help="Ray cluster to run on (default: a local Ray)")
    s.add_argument(
        "--resume",
        type=Path,
        metavar="OUTPUT_DIR",
        help="continue an interrupted search from its output folder (every setting as it was)",
    )

    m = sub.add_parser("measure", help="build and measure one variant, outside Ray, with the same protocol")
    m.add_argument("model")
    m.add_argument("--config", required=True, type=Path, help="variant YAML, e.g. <output>/recommended.yaml")
    m.add_argument("--space", help="space file whose eval/timing settings to use (default as for search)")
    _add_model_args(m)
    m.add_argument("--json", action="store_true", help="print one JSON object with the figures")

    n = sub.add_parser("nightly", help="run a nightly tuning job: warm start, regression check, champion")
    n.add_argument("job", type=Path, metavar="JOBFILE", help="job YAML, e.g. search_spaces/jobs/nightly.example.yaml")
    n.add_argument("--resume", action="store_true", help="continue the job's last interrupted run")

    r = sub.add_parser("report", help="print the trial table and Pareto front of a logged search")
    r.add_argument("--experiment", help="MLflow experiment (default: the latest tuner/* search)")
    r.add_argument("--run-id", metavar="PARENT_RUN_ID", help="the search's parent run (default: the latest)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    r.add_argument(
        "--format",
        choices=["table", "markdown", "csv", "json"],
        default="table",
        help="table (default, for the terminal), markdown, csv or json (all trials, or the comparison)",
    )
    r.add_argument(
        "--baseline-run-id",
        metavar="PARENT_RUN_ID",
        help="compare with this earlier search: per config, the change in latency, throughput and quality",
    )
    r.add_argument(
        "--sync",
        type=Path,
        metavar="OUTPUT_DIR",
        help="upload the trials a search kept in OUTPUT_DIR while the MLflow store was unreachable",
    )
    return p


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="image folder: class sub-folders (labeled) or flat (unlabeled)")
    p.add_argument("--weights", help="auto (default), pretrained, random, or a state-dict PATH")
    p.add_argument("--eval-samples", type=int, metavar="N", help="eval-set size (space default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, random init and sampler (default 0)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "search":
            return _search(args)
        if args.command == "measure":
            return _measure(args)
        if args.command == "nightly":
            from tuner.nightly import run_job

            return run_job(args.job, resume=args.resume)
        return _report(args)
    except TunerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _load_space(args: argparse.Namespace, **search: object) -> tuple[SearchSpace, Path]:
    from tuner.space import SearchSpace, resolve_space_file

    path = resolve_space_file(args.model, args.space)
    space = SearchSpace.load(path).with_overrides(eval={"samples": args.eval_samples}, search=search)
    return space, path


RESUME_CONFLICTS = ("space", "trials", "time_budget", "objective", "max_accuracy_drop", "max_latency_ms", "data",
                    "weights", "eval_samples", "tracking_uri", "experiment", "output", "address")  # fmt: skip


def _search(args: argparse.Namespace) -> int:
    from tuner.errors import ConfigError
    from tuner.search import SearchRequest, load_request, run_search
    from tuner.tracking import default_tracking_uri

    if args.resume is not None:
        given = [f"--{f.replace('_', '-')}" for f in RESUME_CONFLICTS if getattr(args, f) is not None]
        if given:
            raise ConfigError(
                f"--resume {args.resume} takes every setting from {args.resume}/search.json; "
                f"it conflicts with {', '.join(given)}"
            )
        req = load_request(args.resume)
        if req.model != args.model:
            raise ConfigError(f"--resume {args.resume}: that search is of `{req.model}`, not `{args.model}`")
        outcome = run_search(req)
        return EXIT_OK if outcome.recommended is not None else EXIT_NO_RESULT

    space, path = _load_space(args, trials=args.trials, time_budget_minutes=args.time_budget, objective=args.objective)
    space = space.with_overrides(
        constraints={"max_accuracy_drop": args.max_accuracy_drop, "max_latency_ms": args.max_latency_ms}
    )
    safe_name = args.model.replace(":", "_").replace("/", "_")
    output = args.output or Path("tuner-results") / f"{safe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    output = output.resolve()
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output {output}: cannot write there ({e.strerror})") from None
    weights = args.weights or "auto"
    if weights not in ("auto", "pretrained", "random"):
        weights = str(Path(weights).resolve())  # absolute: `--resume` may run from another folder
    outcome = run_search(
        SearchRequest(
            model=args.model,
            space=space,
            space_file=path.resolve(),
            weights=weights,
            data=str(Path(args.data).resolve()) if args.data else None,
            tracking_uri=args.tracking_uri or default_tracking_uri(),
            experiment=args.experiment or f"tuner/{args.model}",
            output=output,
            seed=args.seed,
            address=args.address,
        )
    )
    return EXIT_OK if outcome.recommended is not None else EXIT_NO_RESULT


def _measure(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from tuner.errors import ConfigError
    from tuner.hardware import detect
    from tuner.measure.ceiling import for_hardware as ceiling_for
    from tuner.models import ModelSpec, check_inputs, resolve_weights
    from tuner.reference import reference_for
    from tuner.trial import TrialSettings, evaluate, set_threads
    from tuner.variant import Variant

    try:
        doc = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {args.config}: cannot read a YAML mapping: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {args.config}: expected a mapping with a `variant:` section")
    try:
        variant = Variant.from_dict(doc.get("variant", doc))
    except TunerError as e:
        raise ConfigError(f"--config {args.config}: {e}") from None
    space, _ = _load_space(args)
    weights = args.weights or doc.get("weights", "auto")
    check_inputs(args.model, weights, args.data)
    cores = os.cpu_count() or 1
    if variant.threads > cores:
        raise ConfigError(
            f"--config {args.config}: `variant.threads` is {variant.threads}; this machine has {cores} cores"
        )
    set_threads(variant.threads)  # inter-op threads can only be set before any parallel work
    spec = resolve_weights(ModelSpec(args.model, weights, args.seed))
    ref = reference_for(spec, space.eval, args.data)
    hw = detect()
    ceiling = ceiling_for(hw)
    out = evaluate(variant, ref, TrialSettings(space.timing, space.eval.screen_min_cosine, ceiling))
    out.pop("traceback", None)
    out.update(weights=ref.weights_label, data=ref.data_label, torch_version=torch.__version__)
    if args.json:
        print(json.dumps(out, default=float))
    else:
        print(f"{variant.label}: status {out['status']} {out.get('error', '')}")
        for k in (
            "latency_p50_ms",
            "latency_p90_ms",
            "latency_p99_ms",
            "throughput_ips",
            "quality",
            "build_s",
            "stable",
        ):
            if k in out:
                print(f"  {k:16s} {out[k]}")
    return EXIT_OK if out["status"] == "ok" else EXIT_NO_RESULT


def _report(args: argparse.Namespace) -> int:
    from tuner import report
    from tuner.errors import ConfigError
    from tuner.search import quiet_env
    from tuner.tracking import check_reachable, default_tracking_uri

    quiet_env()
    if args.sync is not None:
        from tuner.sync import sync

        if args.run_id or args.experiment or args.tracking_uri:
            raise ConfigError("--sync takes the store, experiment and run from OUTPUT_DIR/search.json; drop the rest")
        n = sync(args.sync)
        print(f"synced {args.sync}: {n} trial(s) uploaded")
        return EXIT_OK
    uri = args.tracking_uri or default_tracking_uri()
    check_reachable(uri)
    run, tracker = _find_search(uri, args.run_id, args.experiment, "--run-id")
    df = report.table_from_runs(tracker.children(run.info.run_id))
    tags = run.data.tags
    if args.baseline_run_id:
        base_run, base_tracker = _find_search(uri, args.baseline_run_id, None, "--baseline-run-id")
        base = report.table_from_runs(base_tracker.children(base_run.info.run_id))
        cmp = report.compare(df, base)
        if args.format != "table":
            print(report.render(cmp, args.format))
            return EXIT_OK
        print(f"search {run.info.run_id} against baseline search {base_run.info.run_id}, per config:")
        for warn in _comparability(tags, base_run.data.tags):
            print(f"  note: {warn}")
        print(report.render(cmp, "markdown"))
        return EXIT_OK
    if args.format != "table":
        print(report.render(df, args.format))
        return EXIT_OK
    print(f"search {run.info.run_id} ({tracker.experiment}), {len(df)} trials")
    print(f"  weights: {tags.get('tuner.weights', '?')}\n  data:    {tags.get('tuner.data', '?')}")
    print(report.format_table(df, "\nAll trials:"))
    if "pareto" in df:
        print(report.format_table(df[df["pareto"]], "\nPareto front:"))
    rec = df[df["recommended"]] if "recommended" in df else df.iloc[:0]
    print(f"\nRECOMMENDED: {rec.iloc[0]['label']}" if len(rec) else "\nno recommendation")
    return EXIT_OK


def _find_search(uri: str, run_id: str | None, experiment: str | None, flag: str) -> tuple[Any, Any]:
    """The parent run `run_id`, or the latest search of `experiment` (default: the latest tuner/*)."""
    from mlflow.tracking import MlflowClient

    from tuner.errors import ConfigError
    from tuner.tracking import Tracker

    if run_id:
        try:
            run = MlflowClient(uri).get_run(run_id)
        except Exception as e:
            raise ConfigError(f"{flag} {run_id}: not found in {uri}: {str(e).splitlines()[0]}") from None
        exp_name = MlflowClient(uri).get_experiment(run.info.experiment_id).name
        if experiment and experiment != exp_name:
            raise ConfigError(
                f"{flag} {run_id} belongs to experiment `{exp_name}`, which conflicts with "
                f"--experiment {experiment}; give one of the two"
            )
        if run.data.tags.get("tuner.kind") != "search":
            raise ConfigError(f"{flag} {run_id}: not a search's parent run (a trial's child run?)")
        return run, Tracker(uri, exp_name)
    exp_name = experiment or _latest_tuner_experiment(uri)
    tracker = Tracker(uri, exp_name)
    run = tracker.latest_parent()
    if run is None:
        raise ConfigError(f"experiment `{exp_name}` in {uri} has no tuner search yet")
    return run, tracker


def _comparability(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """What differs between two searches' setups, so that a change is read correctly."""
    keys = {"tuner.model": "model", "tuner.weights": "weights", "tuner.data": "data", "hw.fingerprint": "hardware",
            "hw.torch_version": "torch"}  # fmt: skip
    return [f"{name} differs: {b.get(k, '?')} -> {a.get(k, '?')}" for k, name in keys.items() if a.get(k) != b.get(k)]


def _latest_tuner_experiment(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    from tuner.errors import ConfigError

    exps = [e for e in MlflowClient(uri).search_experiments() if e.name.startswith("tuner/")]
    if not exps:
        raise ConfigError(
            f"no tuner experiment in {uri}; run `python -m tuner search MODEL` first, or pass --experiment"
        )
    return max(exps, key=lambda e: e.last_update_time or 0).name
