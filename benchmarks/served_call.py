"""The served call against the measured call (a benchmark, not a test: nothing is asserted).

For each registered model given: `tuner measure --model-uri` (the artifact in one quiet
process, the search's protocol: its p50), then `tuner serve` of the same model with its
defaults, one `.npy` request at a time, the replica's own `X-Infer-Ms` read from each answer:
its median fresh, then again after a load of `--load-s` seconds of 8 closed-loop clients (half
of them sending `.npy` rows, half 1920x1080 JPEGs), then `measure` once more; `--rounds`
times, the models in turn. The box's speed drifts for 5-60 s at a time, so each served median
is divided by the mean of the two `measure` p50s around it, and the table gives every round.
`--serve-from DIR` serves from another checkout of tuner (its folder put first on the
service's PYTHONPATH): the before-and-after figures of a change, on one box.

    python benchmarks/served_call.py --tracking-uri sqlite:///$PWD/mlflow.db \\
        models:/tuner-resnet18@candidate models:/tuner-resnet50@candidate

Prints a markdown table: artifact kind, measure p50, served median fresh and after load,
and the ratios. The issue's target is a ratio <= 1.10 (issue 31).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

PY = sys.executable


def _env(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{Path(PY).parent}:{os.environ['PATH']}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(uri: str, tracking_uri: str) -> dict:
    r = subprocess.run([PY, "-m", "tuner", "measure", "--model-uri", uri, "--json"], capture_output=True, text=True,
                       env=_env(tracking_uri), timeout=900)  # fmt: skip
    if r.returncode:
        raise RuntimeError(f"measure failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def body(shape: list[int]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32))
    return buf.getvalue()


def one_at_a_time(url: str, data: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/x-npy"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            out.append(float(r.headers["X-Infer-Ms"]))
    return out


def load(url: str, data: bytes, seconds: float, clients: int = 8) -> int:
    import aiohttp

    from tuner.inputs.images import photo_jpeg

    bodies = [(data, "application/x-npy"), (photo_jpeg(1920, 1080, 0), "image/jpeg")]

    async def client(s: aiohttp.ClientSession, stop: float, done: list[int], i: int) -> None:
        body, kind = bodies[i % 2]
        while time.monotonic() < stop:
            async with s.post(url, data=body, headers={"Content-Type": kind}) as r:
                await r.read()
                if r.status == 503:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                else:
                    done[0] += 1

    async def main() -> int:
        done = [0]
        stop = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            await asyncio.gather(*(client(s, stop, done, i) for i in range(clients)))
        return done[0]

    return asyncio.run(main())


def serve(uri: str, tracking_uri: str, folder: Path, serve_from: str = "") -> tuple[subprocess.Popen, str]:
    port = _port()
    log = folder / f"serve-{port}.log"
    env = _env(tracking_uri)
    if serve_from:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (serve_from, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([PY, "-m", "tuner", "serve", uri, "--port", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env, cwd=serve_from or None)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tuner serve exited: {log.read_text()[-2000:]}")
        if "Ctrl-C to stop" in log.read_text():
            print(log.read_text().strip(), flush=True)
            return proc, url
        time.sleep(1)
    raise RuntimeError(f"{url} did not start within 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_uri", nargs="+")
    ap.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--load-s", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve-from", default="", metavar="DIR", help="serve from this checkout of tuner")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-served-call-") as tmp:
        for uri in [u for _ in range(args.rounds) for u in args.model_uri]:
            before = measure(uri, args.tracking_uri)
            proc, url = serve(uri, args.tracking_uri, Path(tmp), args.serve_from)
            try:
                desc = json.loads(urllib.request.urlopen(url, timeout=30).read())
                data = body(desc["input_shape"])
                one_at_a_time(url, data, 5)  # the first calls after start-up
                fresh = statistics.median(one_at_a_time(url, data, args.requests))
                done = load(url, data, args.load_s)
                after = statistics.median(one_at_a_time(url, data, args.requests))
            finally:
                stop(proc)
            later = measure(uri, args.tracking_uri)
            ref = (before["latency_p50_ms"] + later["latency_p50_ms"]) / 2
            rows.append((desc["artifact"], desc["label"], before["latency_p50_ms"], later["latency_p50_ms"], fresh,
                         after, done, ref))  # fmt: skip
            print(f"{uri}: measure {before['latency_p50_ms']:.2f} / {later['latency_p50_ms']:.2f} ms, served "
                  f"{fresh:.2f} ms fresh, {after:.2f} ms after {done} loaded requests", flush=True)  # fmt: skip
    print("\n| artifact | variant | measure p50 ms (before / after) | served median ms fresh | after load | "
          "fresh / measure | after load / measure |")
    print("|---|---|---|---|---|---|---|")
    for kind, label, b, a, fresh, after, _done, ref in rows:
        print(f"| {kind} | {label} | {b:.2f} / {a:.2f} | {fresh:.2f} | {after:.2f} | {fresh / ref:.2f}x | "
              f"{after / ref:.2f}x |")


if __name__ == "__main__":
    main()
