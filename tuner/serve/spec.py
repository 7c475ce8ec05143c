"""`ServeSpec`: everything one `tuner serve` service runs, as plain values, so that the same
spec starts the service from the command line, from a Serve config file (`serve run`, the
`args:` of `tuner serve --export`) and from a KubeRay RayService.

Defaults come from the pick (`ServeSpec.for_model`): the largest batch is the artifact's own
batch size (a static-shape artifact runs nothing larger in one call), a batch waits at most
half of one batch's confirmed latency to fill, a replica runs the pick's threads and holds
two batches (one running, one filling), and the proxy queues four times what the replicas
hold before it answers 503.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from tuner.core.errors import ConfigError

INGRESSES = ("haproxy", "proxy")
MAX_WAIT_S = 0.05  # the default batch wait never exceeds this, whatever the pick's latency


@dataclass(frozen=True)
class ServeSpec:
    model_uri: str  # what is served: models:/name/version, runs:/..., models:/m-<id>, a folder
    location: str  # where its files are (an artifact URI or a folder): each replica downloads them
    tracking_uri: str  # absolute: replicas run in other processes, maybe on other nodes
    model: str  # the model name the pick was tuned for (preprocessing and class names)
    weights: str  # its resolved weights (pretrained / random / factory / a path)
    input_shape: tuple[int, int, int]  # (C, H, W) of one row
    artifact: str  # onnx | openvino | aoti | exported | torchscript
    artifact_batch: int  # the static batch the artifact was built and measured for
    label: str  # the variant's label
    replicas: int = 1
    threads: int = 1  # per replica: the runtime's intra-op threads, and the CPUs Ray reserves
    max_batch_size: int = 1  # requests merged into one model call by @serve.batch
    batch_wait_timeout_s: float = 0.0
    max_ongoing_requests: int = 2  # per replica (bounds the batch the batcher can form)
    max_queued_requests: int = 8  # per proxy, beyond what the replicas hold: then 503
    max_body_mb: float = 16.0
    max_rows: int = 64  # rows (images) in one request
    top_k: int = 5
    route_prefix: str = "/"
    # haproxy: Ray Serve's HAProxy in front of replicas that take HTTP themselves; proxy: its Python proxy
    ingress: str = "haproxy"
    # images: exact (full-size decode, the search's path) or fast (JPEG at a reduced DCT scale,
    # inputs/images.py); serve/source.py chooses it from the registered agreement
    decode: str = "exact"

    def __post_init__(self) -> None:
        if self.ingress not in INGRESSES:
            raise ConfigError(f"`ingress` is {self.ingress!r}; allowed: {', '.join(INGRESSES)}")
        if self.decode not in ("exact", "fast"):
            raise ConfigError(f"`decode` is {self.decode!r}; allowed: exact, fast")
        _at_least(self, "replicas", 1)
        _at_least(self, "threads", 1)
        _at_least(self, "max_batch_size", 1)
        _at_least(self, "max_ongoing_requests", 1)
        _at_least(self, "max_rows", 1)
        _at_least(self, "top_k", 1)
        _at_least(self, "artifact_batch", 1)
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ConfigError(f"`max_queued_requests` is {self.max_queued_requests}; allowed: -1 (no limit) or >= 1")
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ConfigError(f"`batch_wait_timeout_s` is {self.batch_wait_timeout_s}; allowed: 0 to 10 seconds")
        if not 0 < self.max_body_mb <= 1024:
            raise ConfigError(f"`max_body_mb` is {self.max_body_mb}; allowed: above 0, at most 1024")
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"`route_prefix` is {self.route_prefix!r}; it must start with /")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"`input_shape` is {self.input_shape}; expected (C, H, W), each at least 1")

    @classmethod
    def for_model(cls, fixed: dict[str, Any], confirmed_p50_ms: float | None, **chosen: Any) -> ServeSpec:
        """The pick's defaults (module docstring) under what the user `chosen` (None: default)."""
        chosen = {k: v for k, v in chosen.items() if v is not None}
        batch = chosen.setdefault("max_batch_size", int(fixed["artifact_batch"]))
        if batch > 1 and "batch_wait_timeout_s" not in chosen:
            half = (confirmed_p50_ms or 10.0) / 2000
            chosen["batch_wait_timeout_s"] = round(min(half, MAX_WAIT_S), 4)
        ongoing = chosen.setdefault("max_ongoing_requests", 2 * batch)
        if ongoing < batch:
            raise ConfigError(
                f"`max_ongoing_requests` is {ongoing}, below `max_batch_size` {batch}: a replica would never hold a "
                "full batch (Ray Serve's batcher takes only the requests its replica holds)"
            )
        chosen.setdefault("max_queued_requests", max(8, 4 * ongoing * chosen.get("replicas", 1)))
        return cls(**fixed, **chosen)

    def to_args(self) -> dict[str, Any]:
        """Plain values: a Serve config file's `args:` (ServeSpec.from_args reads them back)."""
        args = asdict(self)
        args["input_shape"] = list(self.input_shape)
        return args

    @classmethod
    def from_args(cls, args: dict[str, Any], source: str = "args") -> ServeSpec:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(names)}")
        required = [n for n in _REQUIRED if n not in args]
        if required:
            raise ConfigError(f"{source}: missing key(s) {required}")
        typed: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in args:
                typed[f.name] = _typed(f.name, args[f.name], source)
        return cls(**typed)

    @staticmethod
    def from_knobs(values: dict[str, Any], source: str) -> dict[str, Any]:
        """The serving knobs among `values` (strings from MLflow tags), typed; an unknown
        knob is an error that names `source`."""
        unknown = sorted(set(values) - set(KNOBS))
        if unknown:
            raise ConfigError(f"{source}: unknown serving knob(s) {unknown}; allowed: {list(KNOBS)}")
        return {k: _typed(k, v, source) for k, v in values.items()}

    def knobs(self) -> dict[str, Any]:
        """What a serving search tunes (search/serving.py), as plain values."""
        return {k: getattr(self, k) for k in KNOBS}

    @property
    def summary(self) -> str:
        wait = f", waits up to {self.batch_wait_timeout_s * 1000:g} ms" if self.max_batch_size > 1 else ""
        return (
            f"{self.replicas} replica(s) x {self.threads} thread(s); batches of up to {self.max_batch_size} "
            f"request(s){wait}; {self.max_ongoing_requests} request(s) held per replica, "
            f"{'no limit' if self.max_queued_requests == -1 else self.max_queued_requests} queued, then 503"
        )


KNOBS = ("replicas", "threads", "max_batch_size", "batch_wait_timeout_s", "max_ongoing_requests", "max_queued_requests")
_REQUIRED = ("model_uri", "location", "tracking_uri", "model", "weights", "input_shape", "artifact", "artifact_batch",
             "label")  # fmt: skip
_INTS = ("replicas", "threads", "max_batch_size", "max_ongoing_requests", "max_queued_requests", "max_rows", "top_k",
         "artifact_batch")  # fmt: skip
_FLOATS = ("batch_wait_timeout_s", "max_body_mb")


def _typed(name: str, value: Any, source: str) -> Any:
    try:
        if name in _INTS:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if name in _FLOATS:
            v = float(value)
            if not math.isfinite(v):
                raise ValueError
            return v
        if name == "input_shape":
            return tuple(int(v) for v in value)
        return str(value)
    except (TypeError, ValueError):
        kind = "an integer" if name in _INTS else "a number" if name in _FLOATS else "[C, H, W]"
        raise ConfigError(f"{source}: `{name}` is {value!r}; expected {kind}") from None


def _at_least(spec: ServeSpec, name: str, low: int) -> None:
    value = getattr(spec, name)
    if value < low:
        raise ConfigError(f"`{name}` is {value}; allowed: at least {low}")
