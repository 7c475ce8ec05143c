"""`python -m tuner loadtest URL [flags]`: a service measured with MLPerf LoadGen
(tuner/serve/loadtest.py); the figures printed, written to loadtest.json and logged to MLflow."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tuner.core.console import say
from tuner.core.env import quiet_logs, service_env
from tuner.core.errors import EXIT_OK, ConfigError
from tuner.serve.loadgen import SCENARIOS
from tuner.serve.loadtest import LoadTest, Outcome, describe_service, image_size, make_bodies, run_load_test
from tuner.serve.results import to_json, write_json


def run(args: argparse.Namespace) -> int:
    service_env()
    quiet_logs()

    scenarios = SCENARIOS if args.scenario == "all" else tuple(s.strip() for s in args.scenario.split(","))
    service = describe_service(args.url)
    t = LoadTest(url=args.url, scenarios=scenarios, request=args.request, latency_bound_ms=args.latency_bound_ms,
                 target_qps=args.qps, duration_s=args.duration_s, min_queries=args.min_queries, samples=args.samples,
                 concurrency=args.concurrency or _admitted(service), timeout_s=args.timeout_s, max_steps=args.max_steps,
                 empty=not args.no_empty, image_size=image_size(args.image_size))  # fmt: skip
    shape = _shape(args.input_shape, service, args.url)
    bodies, label = make_bodies(t.request, t.samples, shape, size=t.image_size)
    out = (args.output or Path("tuner-loadtests") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    what = f"{service['label']} ({service['model_uri']})" if service else "a server that does not describe itself"
    say(f"load test of {args.url}: {what}")
    say(f"  bodies: {label}; LoadGen logs in {out}")
    if service is None and t.empty:
        say("  (no empty-endpoint runs: only tuner serve has one)")
    empty_url = args.url.rstrip("/") + "/noop" if service else None
    outcomes = run_load_test(t, bodies, out, say, empty_url)
    doc = to_json(t, outcomes, label, service)
    write_json(out / "loadtest.json", doc)
    from tuner.serve.plot import curve, draw

    picture = draw([curve(service["label"] if service else args.url, outcomes)], t.latency_bound_ms,
                   out / "loadtest.png", f"load test of {what}; {label}")  # fmt: skip
    say("")
    for o in outcomes:
        say(f"{o.scenario:13s} {o.headline(t.latency_bound_ms)}")
    say(f"results: {out / 'loadtest.json'}, the picture: {picture}")
    if not args.no_mlflow:
        _log(args, t, outcomes, doc, out, service)
    return EXIT_OK


def _admitted(service: dict | None) -> int:
    """Requests in flight at most: what a tuner service holds in its replicas (more would
    only queue at its proxy, or be refused with 503), else 64."""
    if not service:
        return 64
    s = service["serving"]
    return max(1, int(s["replicas"]) * int(s["max_ongoing_requests"]))


def _shape(given: str | None, service: dict | None, url: str) -> tuple[int, int, int]:
    if given:
        try:
            c, h, w = (int(v) for v in given.split(","))
            return (c, h, w)
        except ValueError:
            raise ConfigError(f"--input-shape {given}: expected C,H,W, e.g. 3,224,224") from None
    if service:
        c, h, w = service["input_shape"]
        return (int(c), int(h), int(w))
    raise ConfigError(f"{url} does not describe itself (not a tuner service): give --input-shape C,H,W")


def _log(
    args: argparse.Namespace, t: LoadTest, outcomes: list[Outcome], doc: dict, out: Path, service: dict | None
) -> None:
    from tuner.serve.results import log_run
    from tuner.serve.source import search_run_of
    from tuner.tracking.store import Tracker, absolute_uri, default_tracking_uri

    serving = (service or {}).get("serving") or {}
    uri = absolute_uri(args.tracking_uri or serving.get("tracking_uri") or default_tracking_uri())
    experiment = args.experiment or (f"tuner/{service['model']}" if service else "tuner/loadtests")
    parent = search_run_of(service["model_uri"], uri) if service else ""
    run_id = log_run(Tracker(uri, experiment), t, outcomes, doc, out, parent)
    say(f"MLflow run {run_id} in {experiment} ({uri})" + (f", under the search run {parent}" if parent else ""))
