"""The serving search's result (search/serving.py): the best trial, and where it goes.

    best          the highest QPS at the bound (server) or images/s (offline) among the
                  trials without failed requests; none: "no config meets p99 <= N ms",
                  with the best p99 seen, and the search exits 1
    registry      the winner's model version (the pick's own, or the other finalist's
                  registered now as a new version, alias `candidate`) gets the knobs as
                  `tuner.serving.<knob>` tags (tuner serve reads them) and serve_config.yaml
    outputs       recommended.yaml's `serving:` section; serving/serve_config.yaml and
                  serving/rayservice.yaml (tuner serve --export's files); the parent run's
                  description, tags and metrics say which config won, against the pick's
                  default service, and why
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tuner.config.request import SearchRequest
from tuner.core.console import say
from tuner.core.errors import one_line
from tuner.serve.spec import KNOBS
from tuner.serve.tuning import Candidate, headline
from tuner.tracking.store import Tracker, fluent_uri, registered_name


@dataclass
class ServingOutcome:
    table: pd.DataFrame  # serving.csv
    winner: pd.Series | None
    met: bool  # a config met the bound (server) or served at all (offline)
    reason: str


def publish_serving(
    req: SearchRequest, tracker: Tracker, parent_id: str, cands: list[Candidate], table: pd.DataFrame
) -> ServingOutcome:
    s = req.space.serving
    if table.empty:
        return ServingOutcome(table, None, False, "no serving trial finished")
    if draw_serving(table, req) is not None:
        tracker.log_artifacts(parent_id, req.output, ["serving.png"])
    ok = table[table["status"].eq("ok") & (table["objective"] > 0)]
    default = _default_row(table, cands[0])
    if ok.empty:
        reason = _nothing_met(table, s.latency_bound_ms, s.scenario)
        say(f"\nserving: {reason}")
        tracker.log(parent_id, tags={"tuner.serving": reason})
        _append_note(tracker, parent_id, f"\n\n## Serving\n\n{reason}")
        return ServingOutcome(table, None, False, reason)
    w = ok.loc[ok["objective"].idxmax()]
    cand = cands[int(w["variant"])]
    knobs = {k: _plain(w[k]) for k in KNOBS}
    why = _why(w, default, cands, s.scenario)
    version = _register(tracker, req, cand, knobs, w, why, parent_id)
    section = {
        "scenario": s.scenario,
        **({"latency_bound_ms": s.latency_bound_ms} if s.scenario == "server" else {}),
        "variant": cand.label,
        "registered_model": version,
        "knobs": knobs,
        "figures": {k: _plain(w[k]) for k in _FIGURES if k in w and pd.notna(w[k])},
        "default_service": _plain(default["objective"]) if default is not None else None,
        "replica_nodes": str(w.get("replica_nodes", "") or ""),  # where its replicas ran (X-Replica-Node)
        "why": why,
        "mlflow_run_id": str(w["mlflow_run_id"]),
    }
    files = _export(req, version)
    _note_recommended(req, section, version)
    tracker.log_artifacts(parent_id, req.output, ["serving.csv", *[f"serving/{f.name}" for f in files]])
    figure = "serving_qps_at_bound" if s.scenario == "server" else "serving_offline_ips"
    metrics = {figure: float(w["objective"])}
    if default is not None and default["objective"] > 0:
        metrics["serving_vs_default"] = float(w["objective"]) / float(default["objective"])
    tracker.log(parent_id, metrics=metrics, tags={"tuner.serving": why, "tuner.registered_model": version})
    _append_note(tracker, parent_id, f"\n\n## Serving\n\n{why}\n\nRegistered as `{version}` with these knobs.")
    say(f"\nSERVING ({s.scenario}): {why}")
    say(f"  registered {version} with the knobs as tuner.serving.* tags; serve it with "
        f"`python -m tuner serve models:/{version}` (or the output folder)")  # fmt: skip
    say(f"  Ray Serve config and KubeRay RayService: {req.output / 'serving'}")
    return ServingOutcome(table, w, True, why)


def draw_serving(table: pd.DataFrame, req: SearchRequest) -> Path | None:
    """serving.png beside serving.csv (serve/plot.py): each ok trial's latency against the
    offered QPS, and where its answers' time went. None when no trial is ok."""
    from tuner.serve.plot import Curve, draw

    s = req.space.serving
    curves = []
    for _, r in table[table["status"].eq("ok")].iterrows():
        raw = r.get("steps")  # JSON [[qps, p50, p99], ...]; absent in a serving.csv written before it
        steps = [tuple(x) for x in json.loads(raw)] if isinstance(raw, str) else []
        stages = {k.removeprefix("stage_").removesuffix("_ms"): float(r[k]) for k in r.index
                  if str(k).startswith("stage_") and pd.notna(r[k])}  # fmt: skip
        offline = float(r["offline_ips"]) if "offline_ips" in r and pd.notna(r["offline_ips"]) else None
        label = f"{int(r['trial'])}: {_knobs_text(r)}"
        curves.append(Curve(label, steps, offline, {s.scenario: stages} if stages else {}))
    if not curves:
        return None
    title = f"serving search of {req.model} ({s.scenario}, {s.request} requests): {len(curves)} ok trial(s)"
    return draw(curves, s.latency_bound_ms, req.output / "serving.png", title)


_FIGURES = ("objective", "qps_at_bound", "offline_ips", "p50_ms", "p90_ms", "p99_ms", "batch_requests_mean",
            "batch_requests_max", "generator_cores", "completed")  # fmt: skip


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _default_row(table: pd.DataFrame, pick: Candidate) -> pd.Series | None:
    """The pick's default service (the first trial, unless it failed to run)."""
    same = table["variant"].eq(0)
    for k, v in pick.default.items():
        same &= table[k].astype(float).eq(float(v))
    rows = table[same]
    return rows.iloc[0] if len(rows) else None


def _nothing_met(table: pd.DataFrame, bound: float, scenario: str) -> str:
    if scenario == "offline":
        return "no serving config answered the offline run without failed requests"
    seen = table[table["status"].eq("ok")]
    if "best_p99_ms" in seen and seen["best_p99_ms"].notna().any():
        i = seen["best_p99_ms"].idxmin()
        where = f"{seen.loc[i, 'label']}, serving trial {int(seen.loc[i, 'trial'])}"
        return (f"no config meets p99 <= {bound:g} ms: the best p99 seen was {seen.loc[i, 'best_p99_ms']:.1f} ms "
                f"({where}); raise --latency-bound-ms")  # fmt: skip
    errors = "; ".join(sorted(set(table["error"].dropna().astype(str)) - {""}))[:300]
    return f"no config meets p99 <= {bound:g} ms: no serving trial answered without failures ({errors or 'none ran'})"


def _why(w: pd.Series, default: pd.Series | None, cands: list[Candidate], scenario: str) -> str:
    unit = "QPS at the bound" if scenario == "server" else "images/s"
    won = f"{cands[int(w['variant'])].label}, {_knobs_text(w)}: {w['objective']:.1f} {unit}"
    if default is None:
        return f"{won} (the pick's default service did not run)"
    if int(w["trial"]) == int(default["trial"]):
        return f"{won}; the pick's default service was the best served config"
    changes = [f"variant {cands[0].label} -> {cands[int(w['variant'])].label}"] if int(w["variant"]) else []
    changes += [f"{k} {_plain(default[k])} -> {_plain(w[k])}" for k in KNOBS if float(default[k]) != float(w[k])]
    ratio = w["objective"] / default["objective"] if default["objective"] > 0 else math.inf
    base = f"{default['objective']:.1f}" if default["objective"] > 0 else "none met the bound"
    return f"{won}, against the pick's default service {base} ({ratio:.2f}x); it differs in {'; '.join(changes)}"


def _knobs_text(r: pd.Series) -> str:
    wait = f", waits {float(r['batch_wait_timeout_s']) * 1000:g} ms" if int(r["max_batch_size"]) > 1 else ""
    return (f"{int(r['replicas'])} replica(s) x {int(r['threads'])} thread(s), batches of up to "
            f"{int(r['max_batch_size'])}{wait}, {int(r['max_ongoing_requests'])} held per replica")  # fmt: skip


def _register(
    tracker: Tracker, req: SearchRequest, cand: Candidate, knobs: dict[str, Any], w: pd.Series, why: str,
    parent_id: str,
) -> str:  # fmt: skip
    """The winner's registered version (module docstring): "NAME/VERSION"."""
    import mlflow

    from tuner.serve.source import serving_tags

    name = registered_name(req.model)
    if cand.model_uri.startswith(f"models:/{name}/"):
        version = cand.model_uri.rsplit("/", 1)[1]
    else:
        with fluent_uri(tracker.uri), contextlib.redirect_stderr(io.StringIO()):
            version = str(mlflow.register_model(cand.model_uri, name).version)
        tracker.set_alias(name, "candidate", version)
        say(f"serving: {cand.label} (not the closed-loop pick) registered as {name}/{version} (alias candidate)")
        tracker.describe_version(name, version, f"{cand.label}, chosen by the serving search: {why}",
                                 {"tuner.variant": cand.label, "tuner.search_run": parent_id})  # fmt: skip
    tracker.describe_version(name, version, None, {
        **serving_tags(knobs), "tuner.serving_scenario": req.space.serving.scenario,
        "tuner.serving_result": headline(dict(w), req.space.serving),
    })  # fmt: skip
    return f"{name}/{version}"


def _export(req: SearchRequest, version: str) -> list[Any]:
    """serve_config.yaml and rayservice.yaml of the winner, in OUTPUT/serving/ and beside the
    registered model's files."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tuner.serve.export import export
    from tuner.serve.source import resolve, spec_for

    spec = spec_for(resolve(f"models:/{version}", req.tracking_uri))
    files = export(spec, req.output / "serving", f"models:/{version}", "127.0.0.1", 8000)
    client = MlflowClient(req.tracking_uri, registry_uri=req.tracking_uri)
    try:
        model_id = client.get_model_version(*version.split("/")).model_id
        if model_id:
            client.log_model_artifact(model_id, str(files[0]))
    except MlflowException as e:
        say(f"warning: serve_config.yaml was not added to the model's files: {one_line(e)}")
    return files


def _note_recommended(req: SearchRequest, section: dict[str, Any], version: str) -> None:
    path = req.output / "recommended.yaml"
    doc = yaml.safe_load(path.read_text()) or {}
    doc["registered_model"] = version  # what `tuner serve OUTPUT_DIR` serves: the served winner
    doc["serving"] = section
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _append_note(tracker: Tracker, parent_id: str, text: str) -> None:
    note = tracker.run(parent_id).data.tags.get("mlflow.note.content", "")
    tracker.log(parent_id, tags={"mlflow.note.content": note + text})
