"""One serving trial, and the space it is drawn from (search/serving.py runs the search).

A trial is one service: a finalist's model under the knobs drawn for it (a ServeSpec),
deployed as a Ray Serve application of its own, measured with LoadGen (serve/loadtest.py)
and deleted:

    server    the highest QPS whose p99 meets the bound: a bisection over the target QPS
              that starts from a short Offline run's rate (serve/loadtest.py `_server`)
    offline   images/s with every sample at once

The knobs (`draw`): which finalist; `max_batch_size`; `batch_wait_timeout_s` (drawn only
when batches can hold more than one request); replicas x threads, every layout that fits
the hardware class's cores (`layouts`); `max_ongoing_requests` as a multiple of the batch
(Ray Serve's batcher takes only what its replica holds, so never below it). The pick's
default service (serve/spec.py) is the first trial, so every value it uses is a choice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.config.space import ServingSettings
from tuner.serve.loadtest import LoadTest, Outcome, image_size, make_bodies, run_load_test
from tuner.serve.spec import ServeSpec

# Ray Serve keeps a deleted replica behind HAProxy for 30 s by default, so that a load
# balancer outside stops sending to it. Between serving trials nothing outside sends.
TRIAL_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def layouts(cores: int, nodes: int, replicas: str | list[int]) -> list[str]:
    """"RxT": R replicas of T threads, T at most one node's cores, R x T at most the class's."""
    out = []
    for t in range(1, cores + 1):
        for r in range(1, (cores * nodes) // t + 1):
            if replicas == "auto" or r in replicas:
                out.append(f"{r}x{t}")
    return out


@dataclass(frozen=True)
class Choices:
    """The values each knob may take (`ServingSettings`, plus the pick's defaults)."""

    variants: int
    max_batch_size: list[int]
    batch_wait_ms: list[float]
    layout: list[str]
    ongoing_per_batch: list[int]

    @classmethod
    def of(cls, s: ServingSettings, variants: int, layouts_: list[str], default: dict[str, Any]) -> Choices:
        def plus(values: list[Any], v: Any) -> list[Any]:
            return sorted({*values, v})

        return cls(
            variants,
            plus(s.max_batch_size, default["max_batch_size"]),
            plus(s.batch_wait_ms, default.get("batch_wait_ms", s.batch_wait_ms[0])),
            layouts_ if default["layout"] in layouts_ else [*layouts_, default["layout"]],
            plus(s.ongoing_per_batch, default["ongoing_per_batch"]),
        )

    def __call__(self, trial: Any) -> None:
        """Optuna's define-by-run space (the wait exists only for batches over one); an
        object, not a closure, so that Tune can save the searcher."""
        trial.suggest_categorical("variant", list(range(self.variants)))
        batch = trial.suggest_categorical("max_batch_size", self.max_batch_size)
        if batch > 1:
            trial.suggest_categorical("batch_wait_ms", self.batch_wait_ms)
        trial.suggest_categorical("layout", self.layout)
        trial.suggest_categorical("ongoing_per_batch", self.ongoing_per_batch)


    def all_points(self) -> list[dict[str, Any]]:
        """Every point of the space, in order (what the sampler falls back to when it keeps
        proposing measured ones: search/sampling.py)."""
        out = []
        for v in range(self.variants):
            for b in self.max_batch_size:
                for w in self.batch_wait_ms if b > 1 else [None]:
                    for layout in self.layout:
                        for k in self.ongoing_per_batch:
                            point = {"variant": v, "max_batch_size": b, "layout": layout, "ongoing_per_batch": k}
                            out.append(point if w is None else {**point, "batch_wait_ms": w})
        return out


def any_point(point: dict[str, Any]) -> bool:
    """Every point of the space is a service (a function, not a lambda: Tune saves the searcher)."""
    return True


def point_key(point: dict[str, Any]) -> str:
    """One text per distinct point (a CSV row's or Optuna's types alike; no wait for batch 1)."""
    batch = int(point["max_batch_size"])
    wait = float(point["batch_wait_ms"]) if batch > 1 else 0.0
    return f"{int(point['variant'])}|{batch}|{wait:g}|{point['layout']}|{int(point['ongoing_per_batch'])}"


def default_point(spec: ServeSpec) -> dict[str, Any]:
    """The pick's default service (ServeSpec.for_model) as a point of the space."""
    point: dict[str, Any] = {"variant": 0, "max_batch_size": spec.max_batch_size,
                             "layout": f"{spec.replicas}x{spec.threads}",
                             "ongoing_per_batch": spec.max_ongoing_requests // spec.max_batch_size}  # fmt: skip
    if spec.max_batch_size > 1:
        point["batch_wait_ms"] = round(spec.batch_wait_timeout_s * 1000, 3)
    return point


def knobs(point: dict[str, Any]) -> dict[str, Any]:
    """A point of the space as ServeSpec fields."""
    replicas, threads = (int(v) for v in str(point["layout"]).split("x"))
    batch = int(point["max_batch_size"])
    ongoing = batch * int(point["ongoing_per_batch"])
    return {
        "replicas": replicas,
        "threads": threads,
        "max_batch_size": batch,
        "batch_wait_timeout_s": float(point.get("batch_wait_ms", 0.0)) / 1000 if batch > 1 else 0.0,
        "max_ongoing_requests": ongoing,
        "max_queued_requests": max(8, 4 * ongoing * replicas),
    }


def _wait_running(name: str, timeout_s: float) -> None:
    """Until Serve says the application runs (its replicas loaded the model); a failed
    deployment, or none within `timeout_s`, raises with Serve's own words."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = str(app.status) if app else "NOT_STARTED"
        if status.endswith("RUNNING"):
            return
        if status.endswith(("DEPLOY_FAILED", "UNHEALTHY")) or time.monotonic() > deadline:
            raise RuntimeError(f"the service {name} is {status}: {app.message if app else ''}"[:500])
        time.sleep(0.25)


def describe_point(point: dict[str, Any], labels: list[str]) -> str:
    k = knobs(point)
    wait = f", wait {k['batch_wait_timeout_s'] * 1000:g} ms" if k["max_batch_size"] > 1 else ""
    return (f"{labels[int(point['variant'])]}: {k['replicas']}x{k['threads']}, batch {k['max_batch_size']}{wait}, "
            f"{k['max_ongoing_requests']} held")  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    label: str
    model_uri: str  # models:/NAME/VERSION for the pick, models:/m-<id> for another finalist
    trial_run: str  # the model search's trial run of this variant
    fixed: dict[str, Any]  # the ServeSpec fields that come from the model (spec_for)
    default: dict[str, Any]  # its default service's knobs (ServeSpec.for_model)

    def spec(self, knobs: dict[str, Any] | None = None, route_prefix: str = "/") -> ServeSpec:
        """Its service under `knobs` (None: its default service's)."""
        fixed = {**self.fixed, "input_shape": tuple(self.fixed["input_shape"])}  # JSON (serving.json) has lists
        return ServeSpec(**fixed, **(self.default if knobs is None else knobs), route_prefix=route_prefix)


@dataclass
class Measured:
    """What one serving trial measured (`figures` are its MLflow metrics)."""

    outcome: Outcome
    deploy_s: float
    measure_s: float

    def figures(self, bound_ms: float) -> dict[str, float]:
        o, r = self.outcome, self.outcome.result
        out: dict[str, float] = {"deploy_s": self.deploy_s, "measure_s": self.measure_s,
                                 "loadgen_runs": float(len(o.steps) or 1)}  # fmt: skip
        if o.scenario == "server":
            out["qps_at_bound"] = r.qps if r else 0.0
            clean = [s.p99_ms for s in o.steps if s.n_failed == 0]
            if clean:
                out["best_p99_ms"] = min(clean)
        elif r is not None:
            out["offline_ips"] = r.qps
        ran = r or (o.steps[-1] if o.steps else None)
        if ran is not None:
            out.update({k: v for k, v in ran.figures().items() if k not in ("qps",)})
            out["qps"] = ran.qps
            if ran.batch_requests:
                out["batch_requests_max"] = max(ran.batch_requests)
        return out

    def replica_nodes(self) -> str:
        """The nodes whose replicas answered, as they said (X-Replica-Node), over every run."""
        runs = [*self.outcome.steps, *([self.outcome.result] if self.outcome.result else [])]
        return ",".join(sorted({n for r in runs for n in r.nodes}))

    def objective(self) -> float:
        r = self.outcome.result
        return float(r.qps) if r is not None and (self.outcome.scenario == "offline" or r.meets_bound) else 0.0


def measure_service(
    spec: ServeSpec, name: str, port: int, s: ServingSettings, log_root: Path, say: Callable[[str], None],
    nodes: dict[str, str] | None = None, target_qps: float | None = None,
) -> Measured:  # fmt: skip
    """Deploy `spec` as the Serve application `name` (Serve is started already, on `port`;
    `nodes`: a Ray label selector for the replicas' nodes), run the scenario of `s` against
    it (server: at `target_qps` alone when given, else the bisection), delete it."""
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from tuner.serve.app import TunedService, deployment_options
    from tuner.serve.service import ANSWER_TIMEOUT_S, wait_for

    free = ray.available_resources().get("CPU", 0.0)
    if spec.replicas * spec.threads > free:  # Serve would wait for them forever
        raise RuntimeError(f"{spec.replicas} replica(s) x {spec.threads} thread(s) need "
                           f"{spec.replicas * spec.threads} CPUs; {free:g} are free in the Ray cluster")  # fmt: skip
    started = time.perf_counter()
    deployment: Any = TunedService
    app = deployment.options(**deployment_options(spec, TRIAL_ENV, nodes)).bind(spec.to_args())
    try:
        serve.run_many([RunTarget(app, name=name, route_prefix=spec.route_prefix)], wait_for_applications_running=False)
        _wait_running(name, ANSWER_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}{spec.route_prefix}"
        wait_for(url, ANSWER_TIMEOUT_S)
        deployed = time.perf_counter()
        t = LoadTest(url=url, scenarios=(s.scenario,), request=s.request, latency_bound_ms=s.latency_bound_ms,
                     duration_s=s.duration_s, min_queries=s.min_queries,
                     concurrency=spec.replicas * spec.max_ongoing_requests, max_steps=s.max_steps,
                     target_qps=target_qps, empty=False, image_size=image_size(s.image_size))  # fmt: skip
        bodies, _ = make_bodies(t.request, t.samples, spec.input_shape, size=t.image_size)
        outcome = run_load_test(t, bodies, log_root, say, None)[0]
        return Measured(outcome, deployed - started, time.perf_counter() - deployed)
    finally:
        serve.delete(name)


def headline(row: dict[str, Any], s: ServingSettings) -> str:
    if row["status"] != "ok":
        return f"failed: {row['error']}"
    if s.scenario == "offline":
        return f"{row.get('offline_ips', 0.0):.1f} images/s (p99 {row.get('p99_ms', float('nan')):.1f} ms)"
    if row.get("qps_at_bound", 0.0) > 0:
        return (f"{row['qps_at_bound']:.1f} QPS at p99 {row['p99_ms']:.1f} ms <= {s.latency_bound_ms:g} ms, "
                f"batches of {row.get('batch_requests_mean', 1.0):.2f}")  # fmt: skip
    best = row.get("best_p99_ms", float("nan"))
    return f"no QPS tried meets p99 <= {s.latency_bound_ms:g} ms (best p99 {best:.1f} ms)"
