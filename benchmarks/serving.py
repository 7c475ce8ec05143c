"""What a user gets when serving tuner's pick, next to what tuner measured in-process, measured
with MLPerf LoadGen over HTTP on this box (a benchmark, not a test: nothing is asserted).

    python benchmarks/serving.py --model-uri models:/tuner-resnet50@candidate
    python benchmarks/serving.py --model-uri models:/tuner-resnet50/2 --rounds 1 --setups inprocess,tuner

Setups, each run in turn in every round (the order is the same each round; the box's speed
drifts for 5-60 s at a time, so each served figure is divided by the in-process figure of its
own round):

  inprocess   `tuner measure --model-uri`: the registered artifact itself, in one process,
              one batch at a time (its throughput at its own batch size is the reference)
  tuner       `tuner serve URI` with the pick's defaults (its batch size, one replica of its
              threads, HAProxy ingress), or with --serve-flags; `tuner loadtest` with .npy requests and with JPEG
              requests of each --image-sizes (preprocessing on the server), each scenario also against the empty
              endpoint at the same rate; then 64 clients at once for --burst-s seconds, each
              sending again as soon as it is answered (200) or refused (503, after its
              Retry-After hint); --serve-from DIR serves from another checkout of tuner
              (before and after a change, with the same load generator)
  unbatched   Ray Serve as a first deployment has it: the Python proxy, no batching
              (`tuner serve --ingress proxy --max-batch-size 1`), .npy requests
  mlflow      `mlflow models serve` (one uvicorn worker) on the same registered model, MLflow
              JSON requests: what users had before; the server scenario's search (at most 3
              steps) and one run at 5 QPS for its p99

Every service runs on this box beside the load generator; `tuner loadtest` prints what the
generator itself used (cores) and the empty endpoint's figures at the same rate.
Output: a table per round, then the medians and the ratios to in-process, and where each
scenario's answers spent their time (the service's headers: `tuner loadtest`'s stages), in
markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PY = sys.executable
SETUPS = ("inprocess", "tuner", "unbatched", "mlflow")


def _env(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{Path(PY).parent}:{os.environ['PATH']}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}") from None
            time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loadtest(url: str, out: Path, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [PY, "-m", "tuner", "loadtest", url, "--latency-bound-ms", str(args.bound_ms), "--duration-s",
           str(args.duration_s), "--min-queries", str(args.min_queries), "--output", str(out), "--no-mlflow",
           *extra]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(args.tracking_uri))
    print(r.stdout[-4000:], flush=True)
    if r.returncode:
        raise RuntimeError(f"loadtest failed: {r.stderr[-2000:]}")
    return json.loads((out / "loadtest.json").read_text())


def burst(url: str, clients: int, seconds: float) -> dict[str, int]:
    """`clients` closed-loop clients for `seconds`: counts of answers by status."""
    import aiohttp

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    body = buf.getvalue()

    async def client(session: aiohttp.ClientSession, counts: collections.Counter, stop: float) -> None:
        while time.monotonic() < stop:
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/x-npy"}) as r:
                    await r.read()
                    counts[str(r.status)] += 1
                    if r.status == 503:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            except aiohttp.ClientError as e:
                counts[f"error {type(e).__name__}"] += 1

    async def main() -> dict[str, int]:
        counts: collections.Counter = collections.Counter()
        stop = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
            await asyncio.gather(*(client(s, counts, stop) for _ in range(clients)))
        return dict(counts)

    return asyncio.run(main())


def inprocess(args: argparse.Namespace) -> dict[str, float]:
    r = subprocess.run([PY, "-m", "tuner", "measure", "--model-uri", args.model_uri, "--json"],
                       capture_output=True, text=True, env=_env(args.tracking_uri))  # fmt: skip
    if r.returncode:
        raise RuntimeError(f"measure failed: {r.stderr[-2000:]}")
    fig = json.loads(r.stdout.strip().splitlines()[-1])
    return {"throughput_ips": fig["throughput_ips"], "p50_ms": fig["latency_p50_ms"], "p90_ms": fig["latency_p90_ms"],
            "batch": fig["batch_size"]}  # fmt: skip


def tuner_service(args: argparse.Namespace, folder: Path, *flags: str) -> tuple[subprocess.Popen, str, Path]:
    port = _port()
    log = folder / f"serve-{port}.log"
    env = _env(args.tracking_uri)
    if args.serve_from:  # that checkout's tuner first, for the service and its replicas (Ray passes the path on)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (args.serve_from, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([PY, "-m", "tuner", "serve", args.model_uri, "--port", str(port), *flags],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            cwd=args.serve_from or None)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    _wait(url, proc, log)
    return proc, url, log


def mlflow_service(args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen, str, Path]:
    port = _port()
    log = folder / f"mlflow-serve-{port}.log"
    proc = subprocess.Popen([PY, "-m", "mlflow", "models", "serve", "-m", args.model_uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=_env(args.tracking_uri))  # fmt: skip
    _wait(f"http://127.0.0.1:{port}/ping", proc, log)
    return proc, f"http://127.0.0.1:{port}/invocations", log


def one_round(args: argparse.Namespace, folder: Path, shape: str) -> dict[str, Any]:
    got: dict[str, Any] = {}
    if "inprocess" in args.setups:
        got["inprocess"] = inprocess(args)
        print(f"in-process: {got['inprocess']}", flush=True)
    if "tuner" in args.setups:
        proc, url, _ = tuner_service(args, folder, *args.serve_flags.split())
        try:
            got["tuner-npy"] = loadtest(url, folder / "tuner-npy", args, "--request", "npy")
            for size in args.image_sizes.split(","):
                got[f"tuner-jpeg-{size}"] = loadtest(url, folder / f"tuner-jpeg-{size}", args, "--request", "jpeg",
                                                     "--image-size", size)  # fmt: skip
            got["burst"] = burst(url, 64, args.burst_s)
            print(f"64 clients for {args.burst_s:g} s: {got['burst']}", flush=True)
        finally:
            _stop(proc)
    if "unbatched" in args.setups:
        proc, url, _ = tuner_service(args, folder, "--ingress", "proxy", "--max-batch-size", "1")
        try:
            got["unbatched"] = loadtest(url, folder / "unbatched", args, "--request", "npy")
        finally:
            _stop(proc)
    if "mlflow" in args.setups:
        proc, url, _ = mlflow_service(args, folder)
        try:
            few = ("--request", "json", "--input-shape", shape, "--min-queries", "100", "--duration-s", "10")
            got["mlflow"] = loadtest(url, folder / "mlflow", args, *few, "--scenario", "single-stream,offline,server",
                                     "--concurrency", "4", "--max-steps", "3")  # fmt: skip
            got["mlflow-5qps"] = loadtest(url, folder / "mlflow-5qps", args, *few, "--scenario", "server", "--qps", "5")
        finally:
            _stop(proc)
    return got


def headline(doc: dict[str, Any]) -> dict[str, float]:
    out = dict(doc["headline"])
    for s in doc["scenarios"]:
        ran = s["result"] or (s["steps"][-1] if s["steps"] else None)
        if ran:
            out[f"{s['scenario']}.p99_ms"] = ran["p99_ms"]
            out[f"{s['scenario']}.generator_cores"] = ran["generator_cores"]
            for k in ("preprocess_ms_mean", "infer_ms_mean", "batch_requests_mean"):
                if k in ran["figures"]:
                    out[f"{s['scenario']}.{k}"] = ran["figures"][k]
            for k, v in (ran.get("stages") or {}).items():
                out[f"{s['scenario']}.stage.{k}_ms"] = v
        if s["empty"]:
            out[f"{s['scenario']}.empty_p50_ms"] = s["empty"]["p50_ms"]
            out[f"{s['scenario']}.empty_qps"] = s["empty"]["qps"]
    return out


def report(rounds: list[dict[str, Any]]) -> None:
    rows: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in rounds:
        ref = r.get("inprocess", {}).get("throughput_ips")
        ref_p90 = r.get("inprocess", {}).get("p90_ms")
        for name, doc in r.items():
            if name in ("inprocess", "burst"):
                continue
            h = headline(doc)
            for k, v in h.items():
                rows[name][k].append(v)
            if ref:
                for k in ("offline_ips", "server_qps_at_bound"):
                    if k in h:
                        rows[name][f"{k} / in-process"].append(h[k] / ref)
            if ref_p90 and "single_stream_p90_ms" in h:
                rows[name]["single_stream_p90_ms - in-process p90"].append(h["single_stream_p90_ms"] - ref_p90)
    print("\n## medians over rounds\n")
    inproc = [r["inprocess"] for r in rounds if "inprocess" in r]
    if inproc:
        print(f"in-process: {statistics.median(x['throughput_ips'] for x in inproc):.1f} images/s, "
              f"p50 {statistics.median(x['p50_ms'] for x in inproc):.1f} ms, "
              f"p90 {statistics.median(x['p90_ms'] for x in inproc):.1f} ms (batch {inproc[0]['batch']})")  # fmt: skip
    for name, figs in rows.items():
        print(f"\n### {name}\n\n| figure | median | per round |\n|---|---|---|")
        for k, vs in sorted(figs.items()):
            print(f"| {k} | {statistics.median(vs):.3g} | {', '.join(f'{v:.3g}' for v in vs)} |")
    for i, r in enumerate(rounds):
        if "burst" in r:
            print(f"\nround {i + 1}: 64 clients: {r['burst']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default="models:/tuner-resnet50@candidate")
    default_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    p.add_argument("--tracking-uri", default=default_uri)
    p.add_argument("--setups", default=",".join(SETUPS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--bound-ms", type=float, default=100.0)
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--min-queries", type=int, default=500)
    p.add_argument("--burst-s", type=float, default=60.0)
    p.add_argument("--input-shape", default="3,224,224")
    p.add_argument("--serve-flags", default="", help="`tuner serve` flags for `tuner`, e.g. '--replicas 2 --threads 1'")
    p.add_argument("--serve-from", default="", metavar="DIR", help="`tuner`: serve from this checkout of tuner")
    p.add_argument("--image-sizes", default="500x375,1920x1080", help="`tuner`: the JPEG load tests' sizes")
    p.add_argument("--output", type=Path, default=Path("bench-results") / f"serving-{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args()
    args.setups = tuple(s for s in args.setups.split(",") if s)
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        p.error(f"--setups: unknown {sorted(unknown)}; allowed: {', '.join(SETUPS)}")
    print(f"serving benchmark of {args.model_uri} ({args.tracking_uri}); output {args.output}", flush=True)
    rounds = []
    for i in range(args.rounds):
        folder = args.output / f"round-{i + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"\n=== round {i + 1} of {args.rounds} ===", flush=True)
        rounds.append(one_round(args, folder, args.input_shape))
        (args.output / "rounds.json").write_text(json.dumps(rounds, indent=2, default=float))
    report(rounds)


if __name__ == "__main__":
    main()
