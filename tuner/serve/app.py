"""The Ray Serve deployment of a tuner pick (docs/serving.md).

    HTTP proxy -> TunedService replica (replicas x threads)
        __call__      reads the body (at most `max_body_mb`), decodes and preprocesses it
                      (payload.py; images on a pool of `threads` decoder threads, exact or
                      fast JPEG decode as `decode` says), then awaits `_infer`
        _infer        @serve.batch: merges up to `max_batch_size` requests, runs them in one
                      call of the artifact's own loader (deploy/pyfunc_model.py, loaded through
                      MLflow) on a single inference thread, the one that loaded it, so the
                      replica's event loop keeps taking requests while the model runs; the
                      loader pads and splits into the artifact's static batch. Batches of
                      one go straight to the inference thread (`_infer_one`)
        answer        JSON (orjson) or .npy (payload.py), with headers: the batch it ran in
                      (X-Batch-Requests, X-Batch-Rows), the JPEG DCT scale an image was decoded
                      at (X-Decode-Scale), where the replica spent the request (X-Read-Ms,
                      X-Preprocess-Ms, X-Queue-Ms, X-Handoff-Ms, X-Infer-Ms, X-Answer-Ms, and
                      X-Replica-Ms for all of it), and the node of the replica that answered,
                      X-Replica-Node (host:<Ray node id>)

`POST .../noop` reads the body and answers at once, without decoding or inference: the load
test times it to say what the proxy, the replica and the load generator cost by themselves.
`GET` describes the service (model, input shape, request formats, settings, and what the
artifact's first calls after the warm-up took, which `tuner serve` compares with the
registered confirmed p50).

Overload: a replica holds `max_ongoing_requests`; the proxy queues `max_queued_requests` more,
then answers 503 with `Retry-After: 1` (Ray Serve's backpressure), never an error.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tuner.inputs.images import ImagePrep
from tuner.serve.payload import ALLOWED, MAX_PIXELS, BadRequest, answer, decode, kind_of, top_k_param
from tuner.serve.source import for_serving
from tuner.serve.spec import ServeSpec

APP_NAME = "tuner"
DRAIN = 4  # a body up to this many times `max_body_mb` is read to its end before the 413


@dataclass
class Inferred:
    outputs: np.ndarray  # this request's rows
    batch_requests: int  # requests merged into the call that ran it
    batch_rows: int
    infer_ms: float  # the model call, timed on the inference thread
    wait_ms: float  # from its arrival at the batcher to its call's start: the batch filling, the thread busy
    handoff_ms: float  # the batch to the inference thread and its outputs back to the event loop


def _pin(threads: int) -> None:
    """The inference thread's torch intra-op threads (ONNX Runtime and OpenVINO get theirs
    from the loader config)."""
    import torch

    torch.set_num_threads(threads)


FIRST_CALLS = (5, 0.5)  # after the warm-up call: at least this many calls, for at least this many seconds


@serve.deployment(name="TunedService")
class TunedService:
    def __init__(self, args: dict[str, Any]) -> None:
        import ray

        from tuner.inputs.models import image_preprocessing

        self.spec = spec = ServeSpec.from_args(args)
        self.node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:6]}"  # as search/cluster.py
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # One thread loads the model and runs every call of it. torch's OpenMP runtime
        # (libgomp) gives each thread that runs parallel work a team of its own: a model
        # loaded (and TorchScript frozen) on the replica's main thread and run on another
        # left two teams, more OpenMP threads than the replica's CPUs. Measured on this
        # 2-core box: resnet18 int8 TorchScript 2.4 ms a call on the loading thread, 4.0 ms
        # on a second thread, and 4.0 ms on the first again after that (docs/serving.md).
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tuner-infer", initializer=_pin,
                                           initargs=(spec.threads,))  # fmt: skip
        self.model, self.config = self.executor.submit(_load, spec).result()
        transform, how, self.categories = image_preprocessing(spec.model, spec.weights, spec.input_shape[1])
        prep = ImagePrep.of(transform)
        fast = spec.decode == "fast"
        self.preprocessing = f"{how}; {'fast JPEG decode (DCT-scaled)' if fast else 'exact decode (full size)'}"
        self.image = functools.partial(prep, fast=fast, max_pixels=MAX_PIXELS)
        # Images are decoded beside the model only as far as the replica's CPUs go; no
        # torch op runs in these threads (inputs/images.py), so they start no OpenMP team.
        self.decoders = ThreadPoolExecutor(spec.threads, thread_name_prefix="tuner-decode")
        warm = np.zeros((spec.artifact_batch, *spec.input_shape), np.float32)
        self.classes = int(self.executor.submit(self._predict, warm).result().shape[1])  # and the first call's cost
        self.first_calls_ms = self.executor.submit(self._first_calls, warm).result()
        # Batches of one skip the batcher's queue and its task (0.2 ms a request here).
        self._run = self._infer if spec.max_batch_size > 1 else self._infer_one
        batcher: Any = self._infer  # serve.batch's wrapper carries its setters
        batcher.set_max_batch_size(spec.max_batch_size)
        batcher.set_batch_wait_timeout_s(spec.batch_wait_timeout_s)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(None, x))

    def _timed(self, x: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The outputs, when the call started (perf_counter) and what it took (ms)."""
        start = time.perf_counter()
        out = self._predict(x)
        return out, start, (time.perf_counter() - start) * 1000

    async def _call(self, x: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """`x` through the inference thread: the outputs, how long it waited for the thread
        (another call running), the call, and the hand-offs both ways (all ms)."""
        submitted = time.perf_counter()
        out, started, ms = await asyncio.get_running_loop().run_in_executor(self.executor, self._timed, x)
        total = (time.perf_counter() - submitted) * 1000
        busy = max(0.0, (started - submitted) * 1000)
        return out, busy, ms, max(0.0, total - busy - ms)

    def _first_calls(self, x: np.ndarray) -> list[float]:
        """The artifact's first calls after the warm-up, timed as `_infer` times a batch:
        `tuner serve` compares them with the registered confirmed p50 (service.py)."""
        n, seconds = FIRST_CALLS
        times: list[float] = []
        end = time.perf_counter() + seconds
        while len(times) < n or (time.perf_counter() < end and len(times) < 50 * n):
            times.append(self._timed(x)[2])
        return times

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)  # set from the spec in __init__
    async def _infer(self, requests: list[tuple[np.ndarray, float]]) -> list[Inferred]:
        """Each request: its rows and when it reached the batcher (perf_counter)."""
        start = time.perf_counter()
        rows = [r for r, _ in requests]
        x = rows[0] if len(rows) == 1 else np.concatenate(rows)
        out, busy, ms, handoff = await self._call(x)
        parts = np.split(out, np.cumsum([len(r) for r in rows])[:-1]) if len(rows) > 1 else [out]
        return [Inferred(p, len(rows), len(x), ms, (start - t) * 1000 + busy, handoff)
                for p, (_, t) in zip(parts, requests, strict=True)]  # fmt: skip

    async def _infer_one(self, request: tuple[np.ndarray, float]) -> Inferred:
        start = time.perf_counter()
        out, busy, ms, handoff = await self._call(request[0])
        return Inferred(out, 1, len(out), ms, (start - request[1]) * 1000 + busy, handoff)

    async def __call__(self, request: Request) -> Response:
        arrived = time.perf_counter()
        if request.method == "GET":
            return JSONResponse(self.describe())
        if request.method != "POST":
            return JSONResponse({"error": f"{request.method}: POST a request ({ALLOWED}), or GET"}, 405)
        try:
            body = await self._body(request)
            if request.url.path.rstrip("/").endswith("/noop"):
                return Response(b"{}", media_type="application/json")
            kind = kind_of(body, request.headers.get("content-type", ""))
            top_k = top_k_param(request.query_params.get("top_k"), self.classes)
            args = (body, kind, self.spec.input_shape, self.spec.max_rows, self.image)
            if kind == "image":
                decoded = await asyncio.get_running_loop().run_in_executor(self.decoders, decode, *args)
            else:
                decoded = decode(*args)
            read = time.perf_counter()
            result: Inferred = await self._run((decoded.rows, read))
            answering = time.perf_counter()
            content, media = answer(result.outputs, kind, request.headers.get("accept", ""), top_k, self.spec.top_k,
                                    self.categories)  # fmt: skip
        except BadRequest as e:
            return JSONResponse({"error": e.message}, e.status)
        done = time.perf_counter()
        headers = {
            "X-Batch-Requests": str(result.batch_requests),
            "X-Batch-Rows": str(result.batch_rows),
            "X-Read-Ms": f"{(read - arrived) * 1000 - decoded.preprocess_ms:.3f}",
            "X-Preprocess-Ms": f"{decoded.preprocess_ms:.3f}",
            "X-Decode-Scale": str(decoded.scale),
            "X-Queue-Ms": f"{result.wait_ms:.3f}",
            "X-Infer-Ms": f"{result.infer_ms:.3f}",
            "X-Handoff-Ms": f"{result.handoff_ms:.3f}",
            "X-Answer-Ms": f"{(done - answering) * 1000:.3f}",
            "X-Replica-Ms": f"{(done - arrived) * 1000:.3f}",
            "X-Replica-Node": self.node,
        }
        return Response(content, media_type=media, headers=headers)

    async def _body(self, request: Request) -> bytes:
        limit = int(self.spec.max_body_mb * 2**20)
        too_big = BadRequest(
            413, f"a body over {self.spec.max_body_mb:g} MB (`max_body_mb`); send one image or fewer rows"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            if "100-continue" in request.headers.get("expect", "").lower() or int(declared) > DRAIN * limit:
                raise too_big  # answered before the body is sent (or it is too big to read at all)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN * limit:
                break
            if size <= limit:
                chunks.append(chunk)
        if size > limit:
            # Read (and dropped) up to DRAIN x the limit: a client that sends its whole body
            # before it reads the answer gets the 413, not a connection reset mid-send.
            raise too_big
        return b"".join(chunks)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {
            "model": s.model, "model_uri": s.model_uri, "label": s.label, "artifact": s.artifact,
            "artifact_batch": s.artifact_batch, "input_shape": list(s.input_shape), "classes": self.classes,
            "class_names": self.categories is not None, "preprocessing": self.preprocessing, "accepts": ALLOWED,
            "serving": s.to_args(), "first_calls_ms": [round(t, 3) for t in self.first_calls_ms],
            "confirmed_p50_ms": self.config.get("confirmed_p50_ms"),
        }  # fmt: skip


# Ray Serve's HAProxy ingress: HAProxy takes the HTTP port and forwards to replicas that
# serve HTTP themselves ("direct ingress"), instead of the Python proxy relaying each request
# (and a large body in many messages) through Ray. Read by the Serve controller and by each
# replica when they start.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
# HAProxy's files: one folder per port, not Ray's fixed /tmp/haproxy-serve, which two
# services on one machine (a service and its comparison, tests) would share.
HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
}


HAPROXY_DIR_MAX = 29


# HAProxy's own listeners besides the service's port: its Prometheus metrics and its stats
# page, on every address, at 9101 and 8404 unless told otherwise; a second service on the
# machine (a `tuner serve` beside a serving search, two services) would fail to bind them.
HAPROXY_SIDE_PORTS = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")


def haproxy_env(port: int, side_ports: bool = False) -> dict[str, str]:
    """What the Serve controller needs for the HAProxy ingress on `port` (a value already in
    the environment wins: the caller chose where HAProxy's files go). `side_ports`: free
    ports of this machine for HAProxy's metrics and stats (a service started here, not a
    config file written for another machine)."""
    folder = os.path.join(tempfile.gettempdir(), f"tuner-haproxy-{port}")
    if len(folder) > HAPROXY_DIR_MAX:  # HAProxy refuses a socket path over 97 characters; Serve adds 68
        folder = f"/tmp/tuner-haproxy-{port}"
    files = {k: os.environ.get(k) or os.path.join(folder, name) for k, name in HAPROXY_FILES.items()}
    env = {**HAPROXY_ENV, **{k: v.rstrip(os.sep) for k, v in files.items()}}
    if side_ports:
        env.update({k: os.environ.get(k) or str(free_port("0.0.0.0")) for k in HAPROXY_SIDE_PORTS})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` now (the operating system's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _load(spec: ServeSpec) -> tuple[Any, dict[str, Any]]:
    """The artifact through its MLflow loader with the replica's threads, and its loader
    config. The downloaded copy is deleted once the model is loaded: a replica is stopped by
    killing its process, which would leave the folder behind."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="tuner-serve-") as tmp:
        local = spec.location
        if "://" in local or local.startswith("runs:/"):
            local = mlflow.artifacts.download_artifacts(artifact_uri=spec.location, dst_path=tmp,
                                                        tracking_uri=spec.tracking_uri)  # fmt: skip
        config = (Model.load(local).flavors["python_function"].get("config")) or {}
        loaded = mlflow.pyfunc.load_model(local, model_config=for_serving(config, spec.threads))
        return loaded.unwrap_python_model(), config


def deployment_options(
    spec: ServeSpec, env: dict[str, str] | None = None, nodes: dict[str, str] | None = None
) -> dict[str, Any]:
    """Ray Serve's options for the spec (module docstring); `env`: more environment for the
    replicas (the serving search's short drain, serve/tuning.py); `nodes`: a Ray label
    selector the replicas' nodes must match (the serving search's hardware class)."""
    actor: dict[str, Any] = {"num_cpus": spec.threads, **({"label_selector": nodes} if nodes else {})}
    env_vars = {**(HAPROXY_ENV if spec.ingress == "haproxy" else {}), **(env or {})}
    if env_vars:
        actor["runtime_env"] = {"env_vars": env_vars}
    return {
        "num_replicas": spec.replicas,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=1),
        "ray_actor_options": actor,
        "graceful_shutdown_timeout_s": 5,
    }


def app_builder(args: dict[str, Any]) -> Any:
    """The application for a Serve config file (`import_path: tuner.serve.app:app_builder`,
    `args:` a ServeSpec's values; `tuner serve --export` writes both)."""
    spec = ServeSpec.from_args(dict(args), "the Serve config's `args`")
    deployment: Any = TunedService  # @serve.deployment made it a Deployment
    return deployment.options(**deployment_options(spec)).bind(spec.to_args())
