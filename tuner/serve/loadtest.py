"""`tuner loadtest URL`: a service measured as MLPerf measures one, with LoadGen (loadgen.py)
over HTTP, end to end.

    single-stream  one query at a time: the p90 latency
    offline        every sample at once (`concurrency` in flight): images/s
    server         Poisson arrivals: the highest QPS whose p99 meets `latency_bound_ms`,
                   found by a bounded bisection over the target QPS (LoadGen's own
                   FindPeakPerformance mode judges latency only and cannot see a refused
                   request); or the figures at one `target_qps`

The generator shares the machine with the service, so each scenario is run a second time
against the service's empty endpoint (`tuner serve`'s POST .../noop: the body is read and
answered without decoding or inference) at the same rates: what the proxy, the replica's
request handling and the generator cost by themselves. The generator's own CPU is given for
every run.
"""

from __future__ import annotations

import io
import json
import math
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuner.config.space import IMAGE_SIZE_FORM, image_size_of
from tuner.core.errors import ConfigError
from tuner.serve.loadgen import SCENARIOS, Body, RunResult, run_loadgen

REQUESTS = ("npy", "jpeg", "json")
JPEG_SIZE = (500, 375)  # a typical ImageNet validation image: `--image-size`'s default
DISTINCT_LARGE = 8  # JPEG bodies over a megapixel: this many distinct images, sent in turn


def image_size(text: str) -> tuple[int, int]:
    """`--image-size WxH` -> (W, H) (config/space.py's rule, as the serving search checks it)."""
    size = image_size_of(text)
    if size is None:
        raise ConfigError(f"--image-size {text}: {IMAGE_SIZE_FORM}")
    return size


@dataclass(frozen=True)
class LoadTest:
    url: str
    scenarios: tuple[str, ...] = SCENARIOS
    request: str = "npy"
    latency_bound_ms: float = 100.0
    target_qps: float | None = None
    duration_s: float = 10.0
    min_queries: int = 500
    samples: int = 64
    concurrency: int = 64
    timeout_s: float = 30.0
    max_steps: int = 7
    empty: bool = True
    image_size: tuple[int, int] = JPEG_SIZE  # JPEG bodies (--request jpeg): width, height

    def __post_init__(self) -> None:
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise ConfigError(f"--scenario {','.join(bad) or '(none)'}; allowed: {', '.join(SCENARIOS)} or all")
        if self.request not in REQUESTS:
            raise ConfigError(f"--request {self.request}; allowed: {', '.join(REQUESTS)}")
        for name in ("latency_bound_ms", "duration_s", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} is {getattr(self, name)}; it must be above 0")
        for name in ("min_queries", "samples", "concurrency", "max_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} is {getattr(self, name)}; it must be at least 1")
        if self.target_qps is not None and not self.target_qps > 0:
            raise ConfigError(f"--qps is {self.target_qps}; it must be above 0")


@dataclass
class Outcome:
    scenario: str
    result: RunResult | None  # single-stream, offline: the run; server: the highest QPS that met the bound
    steps: list[RunResult] = field(default_factory=list)  # server: every target QPS tried
    empty: RunResult | None = None  # the empty endpoint at the same rate

    def headline(self, bound_ms: float) -> str:
        r = self.result
        if self.scenario == "single-stream" and r:
            return f"p90 {r.p90_ms:.1f} ms"
        if self.scenario == "offline" and r:
            return f"{r.qps:.1f} images/s"
        if r is not None:
            return f"{r.qps:.1f} QPS at p99 {r.p99_ms:.1f} ms <= {bound_ms:g} ms"
        best = min((s.p99_ms for s in self.steps if s.n_failed == 0), default=math.nan)
        return f"no QPS tried meets p99 <= {bound_ms:g} ms (best p99 without failures {best:.1f} ms)"


def describe_service(url: str) -> dict[str, Any] | None:
    """`tuner serve`'s description of itself (GET), or None for another server."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        return doc if isinstance(doc, dict) and "input_shape" in doc else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def make_bodies(
    kind: str, n: int, shape: tuple[int, int, int], seed: int = 0, size: tuple[int, int] = JPEG_SIZE
) -> tuple[list[Body], str]:
    """`n` request bodies and an honest label of them: synthetic photo-like images as JPEG
    bytes (`size`, quality 90, the service preprocesses them; over a megapixel, DISTINCT_LARGE
    distinct ones in turn), or preprocessed rows (.npy, or MLflow JSON)."""
    rng = np.random.default_rng(seed)
    if kind == "jpeg":
        from tuner.inputs.images import photo_jpeg

        distinct = n if size[0] * size[1] <= 10**6 else min(n, DISTINCT_LARGE)
        images = [photo_jpeg(size[0], size[1], seed + i) for i in range(distinct)]
        bodies = [Body(images[i % distinct], "image/jpeg") for i in range(n)]
        kb = sum(len(b) for b in images) / distinct / 1000
        return bodies, (f"synthetic photo-like JPEG images ({n}, {distinct} distinct, {size[0]}x{size[1]}, about "
                        f"{kb:.0f} KB, quality 90, seed {seed})")  # fmt: skip
    c, h, w = shape
    rows = []
    for _ in range(n):
        low = rng.random((c, -(-h // 8), -(-w // 8)), dtype=np.float32)  # an 8x coarser image, blown up
        rows.append(((np.kron(low, np.ones((8, 8), np.float32))[:, :h, :w] - 0.45) / 0.225)[None])
    what = f"synthetic preprocessed rows ({n}, [1, {c}, {h}, {w}] float32, seed {seed})"
    if kind == "npy":
        bodies = []
        for x in rows:
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(x))
            bodies.append(Body(buf.getvalue(), "application/x-npy", "application/x-npy"))
        return bodies, f"{what} as .npy (answers as .npy)"
    return [
        Body(json.dumps({"inputs": x.tolist()}).encode(), "application/json") for x in rows
    ], f"{what} as MLflow JSON"


def run_load_test(
    t: LoadTest, bodies: list[Body], log_root: Path, say: Callable[[str], None], empty_url: str | None
) -> list[Outcome]:
    """Each scenario of `t` in turn (module docstring); LoadGen's logs under `log_root`."""
    outcomes: list[Outcome] = []
    capacity: float | None = None  # offline images/s, or 1 / single-stream p50: where the QPS search starts
    common: dict[str, Any] = {
        "latency_bound_ms": t.latency_bound_ms,
        "duration_s": t.duration_s,
        "min_queries": t.min_queries,
        "concurrency": t.concurrency,
        "timeout_s": t.timeout_s,
    }
    for scenario in sorted(t.scenarios, key=SCENARIOS.index):
        if scenario == "server":
            out = _server(t, bodies, log_root, say, capacity, common)
        else:
            r = run_loadgen(t.url, bodies, scenario, log_root / scenario, expected_qps=capacity or 50.0, **common)
            capacity = r.qps if scenario == "offline" else (capacity or 1000.0 / max(r.p50_ms, 1e-3))
            out = Outcome(scenario, r)
            say(f"  {scenario:13s} {out.headline(t.latency_bound_ms)}; {_line(r)}")
        if empty_url and t.empty:
            ran = out.result or (out.steps[-1] if out.steps else None)
            qps = ran.target_qps if ran and scenario == "server" else None
            out.empty = run_loadgen(empty_url, bodies, scenario, log_root / f"{scenario}-empty", target_qps=qps,
                                    expected_qps=capacity or 50.0, **common)  # fmt: skip
            say(f"  {'':13s} empty endpoint at the same rate: {_line(out.empty)}")
        outcomes.append(out)
    return outcomes


def _server(
    t: LoadTest, bodies: list[Body], log_root: Path, say: Callable[[str], None], capacity: float | None,
    common: dict[str, Any],
) -> Outcome:  # fmt: skip
    """The server scenario: one run at `t.target_qps`, or the bisection (module docstring)."""
    out = Outcome("server", None)

    def at(qps: float) -> RunResult:
        r = run_loadgen(t.url, bodies, "server", log_root / f"server-{len(out.steps) + 1}", target_qps=qps, **common)
        out.steps.append(r)
        verdict = "meets" if r.meets_bound else "misses"
        bound = f"p99 <= {t.latency_bound_ms:g} ms"
        say(f"  server        step {len(out.steps)}: {qps:.1f} QPS -> {verdict} {bound}; {_line(r)}")
        return r

    if t.target_qps is not None:
        r = at(t.target_qps)
        out.result = r if r.meets_bound else None
        return out
    if capacity is None:  # no scenario before it said how fast the service is: a short offline run does
        short = {**common, "duration_s": min(3.0, t.duration_s), "min_queries": min(t.min_queries, 100)}
        capacity = run_loadgen(t.url, bodies, "offline", log_root / "server-capacity", **short).qps
    low, high = 0.0, max(capacity, 0.1) * 1.1
    qps = 0.8 * high / 1.1
    for _ in range(t.max_steps):
        r = at(qps)
        if r.meets_bound:
            low, out.result = qps, r
        else:
            high = qps
        if low and (high - low) / high < 0.05:
            break
        qps = (low + high) / 2 if low else high / 2  # bisect, or halve until one QPS meets the bound
    return out


def _line(r: RunResult) -> str:
    failed = ", ".join(f"{n} x {status}" for status, n in sorted(r.failed.items())) or "none"
    extra = ""
    if r.batch_requests:
        extra = f"; batches of {np.mean(r.batch_requests):.2f} request(s) on average (max {max(r.batch_requests)})"
    if r.stages:
        extra += "; ms per answer: " + ", ".join(f"{k} {v:.2f}" for k, v in r.stages.items())
    return (
        f"{r.qps:.1f}/s, p50 {r.p50_ms:.1f} p90 {r.p90_ms:.1f} p99 {r.p99_ms:.1f} ms, {r.completed} queries, "
        f"failed: {failed}; generator {r.generator_cores:.2f} cores{extra}"
    )
