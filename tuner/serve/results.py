"""A load test as an MLflow run (docs/serving.md).

The run goes in the served model's experiment (`tuner/<model>`), as a child of the search
that made the pick when the registry says which (the version's `tuner.search_run` tag), so
the MLflow UI shows the served figures beside the trials. Tagged `tuner.kind=loadtest`.

    params     url, request kind and what the bodies were, LoadGen settings, the service's
               own settings (`tuner serve`'s ServeSpec) when it is a tuner service
    metrics    per scenario, `<scenario>.<figure>` (qps, p50_ms, p90_ms, p99_ms, completed,
               failed, generator_cores, batch_requests_mean, preprocess_ms_mean, infer_ms_mean),
               the same for the empty endpoint as `<scenario>.empty.<figure>`, and the
               headline: `single_stream_p90_ms`, `offline_ips`, `server_qps_at_bound`
    artifacts  loadtest.json (every run, server steps included), loadtest.png (plot.py) and
               LoadGen's summaries
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tuner.serve.loadgen import RunResult
from tuner.serve.loadtest import LoadTest, Outcome
from tuner.tracking.store import PARENT_TAG, Tracker


def headline(outcomes: list[Outcome]) -> dict[str, float]:
    out: dict[str, float] = {}
    for o in outcomes:
        if o.scenario == "single-stream" and o.result:
            out["single_stream_p90_ms"] = o.result.p90_ms
        elif o.scenario == "offline" and o.result:
            out["offline_ips"] = o.result.qps
        elif o.scenario == "server" and o.steps:
            out["server_qps_at_bound"] = o.result.qps if o.result else 0.0
    return out


def to_json(t: LoadTest, outcomes: list[Outcome], bodies: str, service: dict[str, Any] | None) -> dict[str, Any]:
    def run(r: RunResult | None) -> dict[str, Any] | None:
        if r is None:
            return None
        d = dataclasses.asdict(r)
        for k in ("batch_requests", "preprocess_ms", "infer_ms"):
            d.pop(k)
        return {**d, "figures": r.figures()}

    return {
        "settings": dataclasses.asdict(t),
        "bodies": bodies,
        "service": service,
        "headline": headline(outcomes),
        "scenarios": [
            {"scenario": o.scenario, "result": run(o.result), "steps": [run(s) for s in o.steps], "empty": run(o.empty)}
            for o in outcomes
        ],  # fmt: skip
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, default=float))


def log_run(
    tracker: Tracker, t: LoadTest, outcomes: list[Outcome], doc: dict[str, Any], log_root: Path, parent: str = ""
) -> str:
    """One MLflow run with the load test's figures; returns its id."""
    service = doc.get("service") or {}
    label = service.get("label") or t.url
    settings = {f"loadgen.{k}": v for k, v in dataclasses.asdict(t).items() if k != "url"}
    params: dict[str, Any] = {"url": t.url, "request": t.request, "bodies": doc["bodies"], **settings}
    params.update({f"serve.{k}": v for k, v in (service.get("serving") or {}).items()})
    tags = {"tuner.kind": "loadtest", "tuner.scenarios": ",".join(o.scenario for o in outcomes),
            "tuner.served": label, **({PARENT_TAG: parent} if parent else {})}  # fmt: skip
    run_id = tracker.start_run(f"loadtest {label}", params, tags)
    metrics = dict(headline(outcomes))
    for o in outcomes:
        key = o.scenario.replace("-", "_")
        if o.result:
            metrics.update({f"{key}.{k}": v for k, v in o.result.figures().items()})
        if o.empty:
            metrics.update({f"{key}.empty.{k}": v for k, v in o.empty.figures().items()})
    tracker.log(run_id, metrics=metrics)
    tracker.log_text(run_id, json.dumps(doc, indent=2, default=float), "loadtest.json")
    if (log_root / "loadtest.png").is_file():
        tracker.log_artifact(run_id, log_root / "loadtest.png")
    for summary in sorted(log_root.glob("*/mlperf_log_summary.txt")):
        tracker.log_artifact(run_id, summary, f"loadgen/{summary.parent.name}")
    tracker.finish(run_id)
    return run_id
