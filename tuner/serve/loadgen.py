"""One MLPerf LoadGen run against an HTTP endpoint (`run_loadgen`): LoadGen schedules the
queries (SingleStream: one after another; Server: Poisson arrivals at a target QPS, open
loop; Offline: every sample at once) and times each from its issue to its completion;
`HttpSut` turns each query into one HTTP POST of a prepared body.

Why open loop: a client that waits for its answer before it sends again slows down with the
server and hides the queueing delay (coordinated omission). LoadGen issues on its own clock,
so a slow server shows up as latency. The SUT never blocks LoadGen's issue thread: requests
run on an asyncio loop in a thread of their own, with one aiohttp session and keep-alive
connections (`concurrency` at most in flight; requests beyond it wait in the client, and
their wait counts as latency).

A request that fails (a 503 when the service is full, a 5xx, a timeout) is completed at once
for LoadGen, so its latency would flatter the service: every run counts failures by status,
and a run with any is not a result (`RunResult.meets_bound`).

The figures are LoadGen's own (mlperf_log_summary.txt). Beside them: what this process (the
generator) cost in cores, and what the service said of each answer (X-Batch-Requests,
X-Replica-Node and the timing headers of `tuner serve`), from which each answer's time is
split into STAGES: `ingress` is the client's own latency, from its request's start, less the
replica's (`X-Replica-Ms`); the others are the replica's own figures.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = ("single-stream", "offline", "server")
# Where an answer's time goes, in the order it is spent (app.py's headers; docs/serving.md):
# ingress (the client's latency from its request's start, less X-Replica-Ms: HAProxy and its
# queue, the connection, the generator), read (the body and the request), decode
# (X-Preprocess-Ms), queue (a batch filling, the inference thread busy), handoff (to the
# inference thread and back), model (X-Infer-Ms), answer.
STAGES = ("ingress", "read", "decode", "queue", "handoff", "model", "answer")
_HEADERS = {"read": "X-Read-Ms", "decode": "X-Preprocess-Ms", "queue": "X-Queue-Ms", "handoff": "X-Handoff-Ms",
            "model": "X-Infer-Ms", "answer": "X-Answer-Ms"}  # fmt: skip
SERVER_LONGEST_S = 30.0  # the order a load test runs them: each sizes the next


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    accept: str = "application/json"


@dataclass
class RunResult:
    scenario: str
    url: str
    target_qps: float | None  # server: the rate LoadGen scheduled
    completed: int  # queries completed for LoadGen (failed ones included)
    failed: dict[str, int]  # HTTP status (or "timeout", "error: ...") -> count
    qps: float  # LoadGen's completed samples per second (offline: samples per second)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    constraints_ok: bool  # LoadGen: the latency percentile meets the bound (server)
    early_stopping_ok: bool  # LoadGen: enough queries to claim the percentile
    generator_cores: float  # CPU time of this process / wall time of the run
    wall_s: float
    batch_requests: list[float] = field(default_factory=list)  # per answer, as the service said
    preprocess_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # answers per replica node, as the service said
    log_dir: str = ""
    stages: dict[str, float] = field(default_factory=dict)  # STAGES -> mean ms per answer (a tuner service)

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def meets_bound(self) -> bool:
        """Server: LoadGen's latency constraint holds and no request failed."""
        return self.constraints_ok and self.n_failed == 0

    def figures(self) -> dict[str, float]:
        out = {"qps": self.qps, "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms,
               "completed": float(self.completed), "failed": float(self.n_failed),
               "generator_cores": self.generator_cores}  # fmt: skip
        if self.target_qps is not None:
            out["target_qps"] = self.target_qps
        for name, values in (("batch_requests", self.batch_requests), ("preprocess_ms", self.preprocess_ms),
                             ("infer_ms", self.infer_ms)):  # fmt: skip
            if values:
                out[f"{name}_mean"] = sum(values) / len(values)
        out.update({f"stage_{k}_ms": v for k, v in self.stages.items()})
        return out


class HttpSut:
    """LoadGen's system under test: each query sample is one POST of `bodies[index]`."""

    def __init__(self, url: str, bodies: list[Body], concurrency: int, timeout_s: float) -> None:
        import aiohttp
        import mlperf_loadgen as lg

        self.lg, self.url, self.bodies = lg, url, bodies
        self.failed: collections.Counter[str] = collections.Counter()
        self.done = 0  # queries completed for LoadGen (answered or failed)
        self.batch: list[float] = []
        self.pre: list[float] = []
        self.infer: list[float] = []
        self.nodes: collections.Counter[str] = collections.Counter()
        self.stages: dict[str, list[float]] = {k: [] for k in STAGES}
        # A query waits here for one of `concurrency` slots (LoadGen's latency counts it); the
        # `ingress` stage starts once it has one, so it is the HTTP path, not this client's queue.
        self.slots = asyncio.Semaphore(concurrency)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tuner-loadgen-http", daemon=True)
        self.thread.start()

        async def session() -> Any:
            return aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            )

        self.session = asyncio.run_coroutine_threadsafe(session(), self.loop).result()
        self.sut = lg.ConstructSUT(self.issue, lambda: None)

    def issue(self, samples: list[Any]) -> None:  # LoadGen's issue thread: never blocks
        for s in samples:
            asyncio.run_coroutine_threadsafe(self._one(s.id, s.index), self.loop)

    async def _one(self, query_id: int, index: int) -> None:
        import aiohttp

        body = self.bodies[index]
        try:
            async with self.slots:
                start = time.perf_counter()
                async with self.session.post(
                    self.url, data=body.data, headers={"Content-Type": body.content_type, "Accept": body.accept}
                ) as r:
                    await r.read()
                    if r.status != 200:
                        self.failed[str(r.status)] += 1
                    else:
                        self._note(r.headers, (time.perf_counter() - start) * 1000)
        except asyncio.TimeoutError:
            self.failed["timeout"] += 1
        except aiohttp.ClientError as e:
            self.failed[f"error: {type(e).__name__}"] += 1
        self.done += 1
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(query_id, 0, 0)])

    def _note(self, headers: Any, client_ms: float) -> None:
        for name, out in (("X-Batch-Requests", self.batch), ("X-Preprocess-Ms", self.pre), ("X-Infer-Ms", self.infer)):
            if name in headers:
                out.append(float(headers[name]))
        if "X-Replica-Node" in headers:
            self.nodes[headers["X-Replica-Node"]] += 1
        if "X-Replica-Ms" in headers and all(h in headers for h in _HEADERS.values()):
            self.stages["ingress"].append(client_ms - float(headers["X-Replica-Ms"]))
            for stage, h in _HEADERS.items():
                self.stages[stage].append(float(headers[h]))

    def stage_means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.stages.items() if v}

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.lg.DestroySUT(self.sut)


def run_loadgen(
    url: str,
    bodies: list[Body],
    scenario: str,
    log_dir: Path,
    *,
    target_qps: float | None = None,
    latency_bound_ms: float = 100.0,
    duration_s: float = 10.0,
    min_queries: int = 500,
    expected_qps: float = 50.0,
    concurrency: int = 64,
    timeout_s: float = 30.0,
) -> RunResult:
    """One LoadGen run of `scenario` (SCENARIOS) in PerformanceOnly mode; logs in `log_dir`."""
    import mlperf_loadgen as lg

    log_dir.mkdir(parents=True, exist_ok=True)
    st = lg.TestSettings()
    st.mode = lg.TestMode.PerformanceOnly
    st.min_duration_ms = int(duration_s * 1000)
    # A slow server ends the run instead of holding it; a server run lasts long enough to issue
    # `min_queries` at its rate (else its p99 comes from fewer queries than asked), at most
    # SERVER_LONGEST_S: below min_queries / 30 s a rate is rarely the answer, and costs minutes.
    longest = 3 * duration_s
    if scenario == "server":
        longest = max(longest, min(SERVER_LONGEST_S, 1.25 * min_queries / float(target_qps or expected_qps) + 1))
    st.max_duration_ms = int(longest * 1000)
    st.min_query_count = min_queries
    if scenario == "server":
        st.scenario = lg.TestScenario.Server
        st.server_target_qps = float(target_qps or expected_qps)
        st.server_target_latency_ns = int(latency_bound_ms * 1e6)
    elif scenario == "offline":
        st.scenario = lg.TestScenario.Offline
        st.offline_expected_qps = float(expected_qps)
    elif scenario == "single-stream":
        st.scenario = lg.TestScenario.SingleStream
        st.single_stream_expected_latency_ns = int(1e9 / max(expected_qps, 1e-3))
    else:
        raise ValueError(f"scenario {scenario!r}; allowed: {SCENARIOS}")
    out = lg.LogOutputSettings()
    out.outdir = str(log_dir)
    out.copy_summary_to_stdout = False
    log = lg.LogSettings()
    log.log_output = out
    log.enable_trace = False
    sut = HttpSut(url, bodies, concurrency, timeout_s)
    qsl = lg.ConstructQSL(len(bodies), len(bodies), lambda _: None, lambda _: None)
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        lg.StartTestWithLogSettings(sut.sut, qsl, st, log)
    finally:
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        lg.DestroyQSL(qsl)
        sut.close()
    summary = parse_summary((log_dir / "mlperf_log_summary.txt").read_text())
    return _result(scenario, url, target_qps if scenario == "server" else None, summary, sut, cpu / wall, wall, log_dir)


def parse_summary(text: str) -> dict[str, str]:
    """mlperf_log_summary.txt's `key : value` lines (the first of each key)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([^:]+?)\s*:\s*(.+?)\s*$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def _ms(summary: dict[str, str], key: str) -> float:
    return float(summary.get(key, "nan")) / 1e6


def _result(
    scenario: str, url: str, target: float | None, s: dict[str, str], sut: HttpSut, cores: float, wall: float,
    log_dir: Path,
) -> RunResult:  # fmt: skip
    rate = s.get("Completed samples per second") or s.get("Samples per second") or s.get("QPS w/o loadgen overhead")
    return RunResult(
        scenario=scenario, url=url, target_qps=target, completed=sut.done, failed=dict(sut.failed),
        qps=float(rate or "nan"), p50_ms=_ms(s, "50.00 percentile latency (ns)"),
        p90_ms=_ms(s, "90.00 percentile latency (ns)"), p99_ms=_ms(s, "99.00 percentile latency (ns)"),
        constraints_ok=s.get("Performance constraints satisfied", "Yes") == "Yes",
        early_stopping_ok=s.get("Early stopping satisfied", "Yes") == "Yes",
        generator_cores=cores, wall_s=wall, batch_requests=sut.batch, preprocess_ms=sut.pre, infer_ms=sut.infer,
        nodes=dict(sut.nodes), log_dir=str(log_dir), stages=sut.stage_means(),
    )  # fmt: skip
