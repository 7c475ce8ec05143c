"""Command line: `python -m tuner search|measure|report|nightly|serve|loadtest|ceiling`.
Parsing and dispatch only; each command's handler is a module of this package
(`cli/search.py`, ...), and the work is elsewhere. `--help` and `report` never import torch
(tests/test_layers.py holds that). The exit codes are core/errors.py's `EXIT_*`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tuner.core.errors import EXIT_INTERRUPTED, EXIT_USAGE, TunerError
from tuner.core.variant import DEVICES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner",
        description="Automated inference tuning for PyTorch models.",
        epilog="exit codes: 0 ok, 1 no result, 2 bad input, 3 nightly regression, 75 nightly locked, 130 interrupted",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_search, _measure, _nightly, _report, _serve, _loadtest, _ceiling):
        add(sub)
    return p


def _search(sub: Any) -> None:
    s = sub.add_parser("search", help="search the variants of a model and recommend one")
    s.add_argument("model", help="torchvision model name (resnet50, ...) or module.path:factory")
    s.add_argument("--space", help="search-space YAML (default: search_spaces/<model>.yaml, else default.yaml)")
    s.add_argument("--trials", type=int, help="number of trials, baseline included (space default: 24)")
    s.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop starting trials after this long")
    s.add_argument("--objective", choices=["latency", "throughput"], help="what the recommendation optimises")
    s.add_argument("--max-accuracy-drop", type=float, metavar="FRACTION", help="relative drop allowed (0.01 = 1%%)")
    s.add_argument("--max-latency-ms", type=float, metavar="MS", help="p90 latency limit")
    s.add_argument(
        "--scenario",
        choices=["single-stream", "server", "offline"],
        help="single-stream: the model search alone (default); server / offline: then search how its finalists "
        "are served under Ray Serve, measured with LoadGen (docs/serving.md)",
    )
    s.add_argument("--latency-bound-ms", type=float, metavar="MS", help="server: the p99 bound (space default: 50)")
    s.add_argument(
        "--image-size", metavar="WxH", help="serving search with JPEG requests: the images' size (default 500x375)"
    )
    _add_model_args(s)
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default: tuner/<model>)")
    s.add_argument("--output", type=Path, help="output folder (default: ./tuner-results/<model>-<timestamp>)")
    s.add_argument("--address", metavar="RAY_ADDRESS", help="Ray cluster to run on (default: a local Ray)")
    s.add_argument(
        "--hardware",
        metavar="CLASS",
        help="the cluster's hardware class to tune for: a `tuner.io/hardware` node label or hw-<fingerprint>"
        " (default: the driver's own; docs/cluster.md)",
    )
    s.add_argument(
        "--device",
        choices=DEVICES,
        help="where the trials run (default: cuda where the class's nodes have a GPU, else cpu)",
    )
    s.add_argument(
        "--resume",
        type=Path,
        metavar="OUTPUT_DIR",
        help="continue an interrupted search from its output folder (every setting as it was)",
    )


def _measure(sub: Any) -> None:
    m = sub.add_parser(
        "measure", help="measure one variant, or a registered model, outside Ray, with the same protocol"
    )
    m.add_argument("model", nargs="?", help="the model (with --config; --model-uri knows its own)")
    how = m.add_mutually_exclusive_group(required=True)
    how.add_argument("--config", type=Path, help="variant YAML, e.g. <output>/recommended.yaml")
    how.add_argument(
        "--model-uri", metavar="URI", help="a registered tuner model, e.g. models:/tuner-resnet50@candidate"
    )
    m.add_argument(
        "--tracking-uri", help="MLflow tracking URI for --model-uri (default: $MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    m.add_argument("--space", help="space file whose eval/timing settings to use (default as for search)")
    _add_model_args(m)
    m.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    m.add_argument("--device", choices=DEVICES, help="where to run it (default: cuda where torch sees a GPU, else cpu)")


def _nightly(sub: Any) -> None:
    n = sub.add_parser("nightly", help="run a nightly tuning job: warm start, regression check, champion")
    n.add_argument("job", type=Path, metavar="JOBFILE", help="job YAML, e.g. search_spaces/jobs/nightly.example.yaml")
    n.add_argument("--resume", action="store_true", help="continue the job's last interrupted run")
    # How a job with several hardware classes runs each class in a process of its own.
    n.add_argument("--only-class", help=argparse.SUPPRESS)
    n.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)


def _report(sub: Any) -> None:
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


def _serve(sub: Any) -> None:
    v = sub.add_parser("serve", help="serve a registered pick with Ray Serve: dynamic batching, image requests")
    v.add_argument(
        "model_uri",
        metavar="MODEL_URI",
        help="models:/tuner-<model>@champion, models:/NAME/VERSION, runs:/RUN_ID/model, or a search's output folder",
    )
    v.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    v.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    v.add_argument("--route-prefix", help="URL path of the service (default /)")
    v.add_argument("--replicas", type=int, help="replicas of the model (default 1)")
    v.add_argument("--threads", type=int, help="threads per replica, reserved as Ray CPUs (default: the pick's)")
    v.add_argument("--max-batch-size", type=int, help="requests merged into one model call (default: the pick's batch)")
    v.add_argument(
        "--batch-wait-timeout-s", type=float, metavar="S", help="longest wait to fill a batch (default: half its p50)"
    )
    v.add_argument("--max-ongoing-requests", type=int, help="requests a replica holds (default 2 x max batch size)")
    v.add_argument(
        "--max-queued-requests",
        type=int,
        help="requests queued beyond those, then 503 (default 4 x what replicas hold)",
    )
    v.add_argument("--max-body-mb", type=float, help="largest request body (default 16)")
    v.add_argument("--max-rows", type=int, help="rows (images) in one request (default 64)")
    v.add_argument("--top-k", type=int, help="classes an image request gets back (default 5)")
    v.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        help="haproxy (default): Ray Serve's HAProxy in front of replicas that take HTTP; proxy: its Python proxy",
    )
    v.add_argument(
        "--decode",
        choices=["auto", "fast", "exact"],
        help="JPEG decode: fast (at a reduced DCT scale), exact (full size, as the search), or auto (default): fast "
        "only where the registered model's measured agreement met the search's accuracy limit",
    )
    v.add_argument("--address", metavar="RAY_ADDRESS", help="Ray cluster to run on (default: a local Ray)")
    v.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write serve_config.yaml (serve run / serve deploy) and rayservice.yaml (KubeRay) to DIR; serve nothing",
    )


def _loadtest(sub: Any) -> None:
    t = sub.add_parser("loadtest", help="measure a service with MLPerf LoadGen: single-stream, server, offline")
    t.add_argument(
        "url", metavar="URL", help="where requests go: tuner serve's URL, or e.g. http://HOST:5001/invocations"
    )
    t.add_argument(
        "--scenario",
        default="all",
        help="single-stream, server, offline, a comma-separated list, or all (default)",
    )
    t.add_argument("--request", choices=["npy", "jpeg", "json"], default="npy", help="request bodies (default npy)")
    t.add_argument("--latency-bound-ms", type=float, default=100.0, metavar="MS", help="server: the p99 bound (100)")
    t.add_argument("--qps", type=float, help="server: measure at this QPS (default: find the highest under the bound)")
    t.add_argument("--max-steps", type=int, default=7, help="server: LoadGen runs of the QPS search, at most (7)")
    t.add_argument("--duration-s", type=float, default=10.0, metavar="S", help="each LoadGen run, at least (10)")
    t.add_argument("--min-queries", type=int, default=500, help="each LoadGen run, at least (500)")
    t.add_argument("--samples", type=int, default=64, help="distinct request bodies (64)")
    t.add_argument(
        "--image-size",
        default="500x375",
        metavar="WxH",
        help="--request jpeg: the images' size in pixels (default 500x375; e.g. 1920x1080, 4032x3024)",
    )
    t.add_argument(
        "--concurrency",
        type=int,
        help="requests in flight at most (default: what a tuner service's replicas hold, else 64)",
    )
    t.add_argument("--timeout-s", type=float, default=30.0, metavar="S", help="one request's timeout (30)")
    t.add_argument("--input-shape", metavar="C,H,W", help="rows' shape, for a server that does not say (not tuner's)")
    t.add_argument("--no-empty", action="store_true", help="skip the empty-endpoint runs")
    t.add_argument(
        "--output", type=Path, help="folder for LoadGen's logs and loadtest.json (default ./tuner-loadtests/...)"
    )
    t.add_argument("--tracking-uri", help="MLflow store for the results (default: the service's, else as for search)")
    t.add_argument("--experiment", help="MLflow experiment (default: tuner/<model> of the service)")
    t.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")


def _ceiling(sub: Any) -> None:
    c = sub.add_parser("ceiling", help="print this machine's ceiling per precision (GFLOP/s, probe, when, load)")
    c.add_argument("--remeasure", action="store_true", help="measure it again now and update the cache")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="image folder: class sub-folders (labeled) or flat (unlabeled)")
    p.add_argument("--weights", help="auto (default), pretrained, random, or a state-dict PATH")
    p.add_argument("--eval-samples", type=int, metavar="N", help="eval-set size (space default: 32)")
    p.add_argument("--seed", type=int, help="seed for data, random init and sampler (default 0)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "search":
            from tuner.cli import search

            return search.run(args)
        if args.command == "measure":
            from tuner.cli import measure

            return measure.run(args)
        if args.command == "nightly":
            from tuner.nightly.job import run_job

            return run_job(args.job, resume=args.resume, only_class=args.only_class, run_dir=args.run_dir)
        if args.command == "serve":
            from tuner.cli import serve

            return serve.run(args)
        if args.command == "loadtest":
            from tuner.cli import loadtest

            return loadtest.run(args)
        if args.command == "ceiling":
            from tuner.cli import ceiling

            return ceiling.run(args)
        from tuner.cli import report

        return report.run(args)
    except TunerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
