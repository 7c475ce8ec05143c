"""`tuner serve`'s life: Ray (joined or started), Serve's HTTP proxy, the application, the
first answer, then serving until Ctrl-C or SIGTERM, and a clean stop.

Ray places the replicas: each reserves its threads as CPUs, so `replicas x threads` must
fit the cluster's CPUs (checked before anything is deployed: Serve would otherwise wait
for resources forever). Serve's own `/-/healthz` answers on the proxy, and Ray's metrics
agent exports Serve's Prometheus series (`serve_*`, batch sizes among them) on each node.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from tuner.core.console import say
from tuner.core.errors import EXIT_OK, ConfigError
from tuner.serve.spec import ServeSpec

ANSWER_TIMEOUT_S = 300  # replicas download and load the artifact, then run one warm-up call


@dataclass
class Running:
    url: str  # where requests go (POST)
    health: str
    metrics: list[str]  # each node's Prometheus endpoint
    host: str
    port: int
    name: str  # the Serve application
    started_ray: bool  # start() started Ray here, and stop() shuts it down
    described: dict[str, Any]  # its GET answer (app.py `describe`), from the replica that answered it


def start(spec: ServeSpec, address: str | None, host: str, port: int, name: str = "") -> Running:
    """Deploy `spec` as the application `name` (default `tuner`) and return once it answers
    a GET. Starts Ray (or joins `address`) unless this process has Ray running already."""
    import ray
    from ray import serve

    from tuner.serve.app import APP_NAME, app_builder, haproxy_env

    name = name or APP_NAME
    _check_port(host, port)
    controller: dict[str, Any] = {}
    if spec.ingress == "haproxy":
        env = haproxy_env(port, side_ports=True)
        os.environ.update(env)  # a Ray that ray.init starts here inherits it
        controller = {"runtime_env": {"env_vars": env}}  # a Serve started on a joined cluster
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
        _stop_on_signals()  # ray.init replaced SIGTERM's handler with sys.exit
    cpus = ray.cluster_resources().get("CPU", 0)
    if spec.replicas * spec.threads > cpus:
        raise ConfigError(
            f"--replicas {spec.replicas} x --threads {spec.threads} needs {spec.replicas * spec.threads} CPUs; "
            f"the Ray cluster has {cpus:g}"
        )
    serve.start(http_options={"host": host, "port": port}, controller_options=controller or None)
    serve.run(app_builder(spec.to_args()), name=name, route_prefix=spec.route_prefix)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}{spec.route_prefix}"
    described = wait_for(url, ANSWER_TIMEOUT_S)
    metrics = [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes()
               if n.get("Alive") and n.get("MetricsExportPort")]  # fmt: skip
    return Running(url, f"http://{shown}:{port}/-/healthz", metrics, host, port, name, started_ray, described)


def stop(running: Running | None) -> None:
    """Where start() started Ray (and always after a failed start, `running` None): shut Ray
    down, Serve's controller, HAProxy and the replicas with it, and wait until the port is
    free for the next service (Ray's processes exit after ray.shutdown returns). On a cluster
    this process joined: delete the application, whose replicas drain first (behind HAProxy,
    Ray Serve keeps a replica for 30 s so that the balancer stops routing to it; measured
    here, `serve.delete` took 31 s, and `serve.shutdown` waited as long for its controller)."""
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    if not ray.is_initialized():
        return  # stopped before Ray started (a bad flag, a port in use)
    if running is not None and not running.started_ray:
        try:
            if running.name in serve.status().applications:
                serve.delete(running.name)
        except RayServeException:
            pass  # Serve is gone already
        return
    ray.shutdown()
    if running is not None:
        _wait_port_free(running.host, running.port, 60)


def serve_until_stopped(spec: ServeSpec, title: str, address: str | None, host: str, port: int) -> int:
    """The `tuner serve` command: start, say where, block until a signal, stop."""
    say(f"starting Ray Serve for {title} ...")
    running = None
    try:
        running = start(spec, address, host, port)
        say(f"serving {title}: {spec.label}, {spec.artifact} artifact")
        say(f"  {spec.summary}")
        say(f"  POST {running.url}   a JPEG/PNG image, an .npy array, or MLflow JSON")
        say(f"    curl -s --data-binary @image.jpg -H 'Content-Type: image/jpeg' {running.url}")
        say(f"  health {running.health}   metrics {' '.join(running.metrics) or '(no metrics agent)'}")
        line, slow = first_calls(running.described)
        if line:
            say(f"{'warning: ' if slow else '  '}{line}")
        say("  Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping the service (a few seconds) ...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C would leave Serve's processes behind
            signal.signal(sig, signal.SIG_IGN)
        stop(running)
    say("stopped")
    return EXIT_OK


SLOW_FIRST_CALLS = 1.2  # a replica's first calls over this x the confirmed p50: a warning


def first_calls(described: dict[str, Any]) -> tuple[str, bool]:
    """What a replica's first calls of the artifact took (app.py `_first_calls`) against the
    registered confirmed p50, and whether that is over SLOW_FIRST_CALLS x; ("", False) when
    the replica or the model does not say."""
    times = described.get("first_calls_ms") or []
    if not times:
        return "", False
    median = statistics.median(times)
    batch = described.get("artifact_batch", 1)
    head = f"a replica's first {len(times)} calls (batch {batch}): median {median:.2f} ms"
    confirmed = described.get("confirmed_p50_ms")
    if not confirmed:
        return f"{head} (the model carries no confirmed p50 to compare with)", False
    ratio = median / float(confirmed)
    line = f"{head}, {ratio:.2f}x the registered confirmed p50 {float(confirmed):.2f} ms"
    if ratio > SLOW_FIRST_CALLS:
        line += (f" (over {SLOW_FIRST_CALLS}x: another load on this machine, a slower host than the search's, or "
                 "threads the replica does not get)")  # fmt: skip
    return line, ratio > SLOW_FIRST_CALLS


def wait_for(url: str, timeout_s: float) -> dict[str, Any]:
    """Until `url` answers a GET with 200 (the replicas have loaded the model); its answer."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    body = r.read()
                    try:
                        doc = json.loads(body)
                    except ValueError:
                        doc = None
                    return doc if isinstance(doc, dict) else {}
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
