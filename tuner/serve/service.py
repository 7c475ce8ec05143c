"""`tuner serve`'s life: Ray (joined or started), Serve's HTTP proxy, the application, the
first answer, then serving until Ctrl-C or SIGTERM, and a clean stop.

Ray places the replicas: each reserves its threads as CPUs, so `replicas x threads` must
fit the cluster's CPUs (checked before anything is deployed: Serve would otherwise wait
for resources forever). Serve's own `/-/healthz` answers on the proxy, and Ray's metrics
agent exports Serve's Prometheus series (`serve_*`, batch sizes among them) on each node.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tuner.core.console import say
from tuner.core.errors import ConfigError
from tuner.serve.spec import ServeSpec

ANSWER_TIMEOUT_S = 300  # replicas download and load the artifact, then run one warm-up call


@dataclass
class Running:
    url: str  # where requests go (POST)
    health: str
    metrics: list[str]  # each node's Prometheus endpoint


def start(spec: ServeSpec, address: str | None, host: str, port: int) -> Running:
    """Deploy `spec` and return once the application answers a GET."""
    import ray
    from ray import serve

    from tuner.serve.app import APP_NAME, HAPROXY_ENV, app_builder

    _check_port(host, port)
    controller: dict[str, Any] = {}
    if spec.ingress == "haproxy":
        os.environ.update(HAPROXY_ENV)  # a Ray that ray.init starts here inherits it
        controller = {"runtime_env": {"env_vars": HAPROXY_ENV}}  # a Serve started on a joined cluster
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    _stop_on_signals()  # ray.init replaced SIGTERM's handler with sys.exit
    cpus = ray.cluster_resources().get("CPU", 0)
    if spec.replicas * spec.threads > cpus:
        raise ConfigError(
            f"--replicas {spec.replicas} x --threads {spec.threads} needs {spec.replicas * spec.threads} CPUs; "
            f"the Ray cluster has {cpus:g}"
        )
    serve.start(http_options={"host": host, "port": port}, controller_options=controller or None)
    serve.run(app_builder(spec.to_args()), name=APP_NAME, route_prefix=spec.route_prefix)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}{spec.route_prefix}"
    wait_for(url, ANSWER_TIMEOUT_S)
    metrics = [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes()
               if n.get("Alive") and n.get("MetricsExportPort")]  # fmt: skip
    return Running(url, f"http://{shown}:{port}/-/healthz", metrics)


def stop(started_ray: bool) -> None:
    """Delete the application (its replicas finish what they hold); on a cluster this process
    joined, also shut Serve down when nothing else is deployed on it; leave Ray (a Ray this
    process started stops with it)."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from tuner.serve.app import APP_NAME

    if not ray.is_initialized():
        return  # stopped before Ray started (a bad flag, a port in use)
    try:
        if APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)
        if not started_ray and not serve.status().applications:
            serve.shutdown()
    except RayServeException:
        pass  # Serve never started on this cluster
    finally:
        ray.shutdown()


def serve_until_stopped(spec: ServeSpec, title: str, address: str | None, host: str, port: int) -> int:
    """The `tuner serve` command: start, say where, block until a signal, stop."""
    say(f"starting Ray Serve for {title} ...")
    import ray

    started_ray = not ray.is_initialized() and address is None
    try:
        running = start(spec, address, host, port)
        say(f"serving {title}: {spec.label}, {spec.artifact} artifact")
        say(f"  {spec.summary}")
        say(f"  POST {running.url}   a JPEG/PNG image, an .npy array, or MLflow JSON")
        say(f"    curl -s --data-binary @image.jpg -H 'Content-Type: image/jpeg' {running.url}")
        say(f"  health {running.health}   metrics {' '.join(running.metrics) or '(no metrics agent)'}")
        say("  Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping the service (a few seconds) ...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C would leave Serve's processes behind
            signal.signal(sig, signal.SIG_IGN)
        stop(started_ray)
        _wait_port_free(
            host, port, 60
        )  # Ray's workers exit after ray.shutdown returns; the next service needs the port
    say("stopped")
    return 0


def wait_for(url: str, timeout_s: float) -> None:
    """Until `url` answers a GET with 200 (the replicas have loaded the model)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.5)
    raise RuntimeError(f"the service at {url} did not answer within {timeout_s:.0f} s ({last})")


def _listener() -> socket.socket:
    """A socket as a server binds it: SO_REUSEADDR, so a port whose old connections wait in
    TIME_WAIT (after a load test) counts as free, as it is for the proxy."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return s


def _check_port(host: str, port: int) -> None:
    with _listener() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); choose another") from None


def _wait_port_free(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with _listener() as s:
            try:
                s.bind((host, port))
                return
            except OSError:
                time.sleep(0.5)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the service cleanly (SIGINT too: a shell starts a background
    job with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
