"""`tuner serve` for real: a Ray Serve application of the registered tiny model, started by
this module on 127.0.0.1 (a local Ray with 8 logical CPUs, Serve's HAProxy ingress with its
files under the module's temporary folder) and stopped at its end. Requests go over real
HTTP: images, tensors and MLflow JSON; batches formed under concurrency; 503 when full; each
bad request a 4xx that names it; every artifact kind served; and `tuner loadtest` (LoadGen)
against it, with its MLflow run."""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import shutil
import signal
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import NAME, VARIANTS, tiny_variant, tuner, use_store

pytestmark = pytest.mark.slow  # a Ray cluster, Serve, and one replica process per application

KINDS = ("torchscript", "exported", "aoti", "onnx", "openvino")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(versions: dict, index: int) -> str:
    return next(v[2] for v in versions.values() if v[0] == tiny_variant(VARIANTS[index][0]))


def _png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def post(url: str, body: bytes, content_type: str, accept: str = "") -> tuple[int, dict, bytes]:
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    req = urllib.request.Request(url, body, headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, _lower(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, _lower(e.headers), e.read()


def _lower(headers: object) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}  # type: ignore[attr-defined]


async def _post_many(url: str, bodies: list[tuple[bytes, str]]) -> list[tuple[int, dict, bytes]]:
    """Every body at once, one connection each."""
    import aiohttp

    async def one(session: aiohttp.ClientSession, body: bytes, ct: str) -> tuple[int, dict, bytes]:
        async with session.post(url, data=body, headers={"Content-Type": ct}) as r:
            return r.status, _lower(r.headers), await r.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(one(session, b, ct) for b, ct in bodies))


@pytest.fixture(scope="module")
def service(registered, tmp_path_factory):
    """`tuner` at / (the FX int8 TorchScript pick, batches of up to 4 waiting 50 ms, the fast
    JPEG decode forced), one application per artifact kind at /kind/<kind> (the decode their
    registered agreement chose), and `tight` at /tight (one request held, one queued, the
    exact decode forced). Yields (base URL, {kind: URL}, registered)."""
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from tuner.serve.app import HAPROXY_DIR_MAX, HAPROXY_FILES, app_builder
    from tuner.serve.service import start
    from tuner.serve.source import resolve, spec_for
    from tuner.serve.tuning import TRIAL_ENV

    folder, uri, ref, versions = registered
    saved_env = dict(os.environ)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # HAProxy's files in a folder of this test's, short enough for HAProxy's socket path
    haproxy_dir = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    assert len(str(haproxy_dir)) <= HAPROXY_DIR_MAX
    for key, name in HAPROXY_FILES.items():
        os.environ[key] = str(haproxy_dir / name) if name else str(haproxy_dir)
    os.environ["RAY_worker_niceness"] = "0"
    os.environ.update(TRIAL_ENV)  # a deleted application's replicas go in 1 s, as in a serving search
    ray.init(address="local", num_cpus=8, log_to_driver=False, include_dashboard=False)
    port = _free_port()
    try:
        main = spec_for(resolve(f"models:/{NAME}/{_version(versions, 0)}", uri), threads=1, max_batch_size=4,
                        batch_wait_timeout_s=0.05, max_ongoing_requests=16, max_queued_requests=64,
                        decode="fast")  # fmt: skip
        running = start(main, None, "127.0.0.1", port)
        # The other applications are deployed together (serve.run_many): their replicas start at once.
        targets, kinds = [], {}
        for kind, index in zip(KINDS, (0, 1, 2, 4, 5), strict=True):
            spec = spec_for(resolve(f"models:/{NAME}/{_version(versions, index)}", uri), route_prefix=f"/kind/{kind}")
            targets.append(RunTarget(app_builder(spec.to_args()), name=f"kind-{kind}", route_prefix=spec.route_prefix))
            kinds[kind] = f"http://127.0.0.1:{port}/kind/{kind}"
        tight = spec_for(resolve(f"models:/{NAME}/{_version(versions, 0)}", uri), route_prefix="/tight",
                         max_ongoing_requests=1, max_queued_requests=1, decode="exact")  # fmt: skip
        targets.append(RunTarget(app_builder(tight.to_args()), name="tight", route_prefix="/tight"))
        serve.run_many(targets)
        yield running.url, kinds, registered
    finally:
        ray.shutdown()  # Serve with it (stop(running) would drain the replicas for 30 s first)
        os.environ.clear()
        os.environ.update(saved_env)
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
        shutil.rmtree(haproxy_dir, ignore_errors=True)


def test_the_service_describes_itself_and_serve_answers_its_health_check(service):
    url, _, _ = service
    doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert doc["input_shape"] == [3, 32, 32] and doc["classes"] == 10 and doc["artifact"] == "torchscript"
    assert doc["serving"]["max_batch_size"] == 4 and doc["preprocessing"].startswith("ImageNet convention")
    assert doc["serving"]["decode"] == "fast" and "fast JPEG decode" in doc["preprocessing"]
    # the artifact's first calls after the warm-up, and the registered figure they are compared with
    assert len(doc["first_calls_ms"]) >= 5 and all(t > 0 for t in doc["first_calls_ms"])
    assert doc["confirmed_p50_ms"] == 1.0
    health = url.split("/", 3)[:3]
    assert urllib.request.urlopen("/".join(health) + "/-/healthz", timeout=10).status == 200


def test_concurrent_images_are_batched_and_answered_as_one_at_a_time(service):
    url, _, _ = service
    images = [_png(i) for i in range(6)]
    alone = [json.loads(post(url, img, "image/png")[2])["top_k"] for img in images]
    assert all(len(a) == 1 and len(a[0]) == 5 for a in alone)  # one image, its five best classes
    answers = asyncio.run(_post_many(url, [(images[i % 6], "image/png") for i in range(24)]))
    assert [status for status, _, _ in answers] == [200] * 24
    batches = [int(h["x-batch-requests"]) for _, h, _ in answers]
    assert max(batches) > 1, f"no batch of more than one request formed: {batches}"
    assert all(1 <= b <= 4 for b in batches) and all(float(h["x-preprocess-ms"]) > 0 for _, h, _ in answers)
    for i, (_, _, body) in enumerate(answers):
        got = json.loads(body)["top_k"][0]
        want = alone[i % 6][0]
        assert [c["class"] for c in got] == [c["class"] for c in want]
        assert [c["score"] for c in got] == pytest.approx([c["score"] for c in want], abs=1e-4)


def test_the_decode_flag_forces_each_path_and_auto_follows_the_registered_agreement(service, request):
    """/ forces the fast decode, /tight the exact one; a kind's application took what its
    version's `tuner.decode.fast` tag said. The same photo's top classes agree."""
    from tuner.inputs.images import photo_jpeg

    url, kinds, (folder, uri, ref, versions) = service
    use_store(request, uri)
    photo = photo_jpeg(1280, 960, 0)  # shorter side 960: 1/8 still covers the resize target 37
    answers = {}
    for name, at in (("fast", url), ("exact", url.rstrip("/") + "/tight")):
        status, headers, body = post(at, photo, "image/jpeg")
        assert status == 200, body[:300]
        answers[name] = (int(headers["x-decode-scale"]), json.loads(body)["top_k"][0])
    assert answers["fast"][0] == 8 and answers["exact"][0] == 1
    assert answers["fast"][1][0]["class"] == answers["exact"][1][0]["class"]
    mv = MlflowClient(uri).get_model_version(NAME, _version(versions, 1))
    want = "fast" if mv.tags["tuner.decode.fast"] == "true" else "exact"
    doc = json.loads(urllib.request.urlopen(kinds["exported"], timeout=10).read())
    assert doc["serving"]["decode"] == want
    status, headers, _ = post(kinds["exported"], photo, "image/jpeg")
    assert status == 200 and int(headers["x-decode-scale"]) == (8 if want == "fast" else 1)


def test_tensor_and_json_requests_give_the_models_outputs(service, request, tmp_path):
    url, _, (folder, uri, ref, versions) = service
    use_store(request, uri)
    x = np.load(folder / "x.npy")
    want = mlflow.pyfunc.load_model(f"models:/{NAME}/{_version(versions, 0)}", dst_path=str(tmp_path)).predict(x)
    status, headers, body = post(url, _npy(x), "application/x-npy", accept="application/x-npy")
    assert status == 200 and headers["content-type"] == "application/x-npy"
    assert np.allclose(np.load(io.BytesIO(body)), want, rtol=1e-4, atol=1e-5)
    status, _, body = post(url, json.dumps({"inputs": x.tolist()}).encode(), "application/json")
    assert status == 200 and np.allclose(json.loads(body)["predictions"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "body, content_type, status, fragment",
    [
        (b"\xff\xd8\xff\xe0 not an image", "image/jpeg", 400, "not a readable image"),
        (_npy(np.zeros((1, 3, 64, 64), np.float32)), "application/x-npy", 422, "shape [1, 3, 64, 64]"),
        (b"", "image/jpeg", 400, "an empty body"),
        (b"plain text", "text/plain", 415, "Content-Type 'text/plain' is not served"),
    ],
)
def test_a_bad_request_is_a_4xx_that_names_it(service, body, content_type, status, fragment):
    url, _, _ = service
    got, _, answer = post(url, body, content_type)
    assert got == status and fragment in json.loads(answer)["error"], answer


def test_a_50_mb_body_is_refused_and_the_service_goes_on(service):
    """413, to a client that sends the whole body before it reads the answer, and before the
    body is sent to one that waits for `100 Continue` (curl does for a large body)."""
    import http.client

    url, _, _ = service
    status, _, body = post(url, b"\xff\xd8\xff" + bytes(50 * 2**20), "image/jpeg")
    assert status == 413 and "a body over 16 MB (`max_body_mb`)" in json.loads(body)["error"]
    host, port = url.split("/")[2].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/")
    for k, v in {"Content-Type": "image/jpeg", "Content-Length": str(50 * 2**20), "Expect": "100-continue"}.items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "a body over 16 MB" in json.loads(r.read())["error"]
    conn.close()
    assert post(url, _png(0), "image/png")[0] == 200


def test_overload_is_refused_with_503_and_a_retry_hint_never_failed(service):
    url, _, _ = service
    tight = url.rstrip("/") + "/tight"
    big = _png(1, (640, 480))  # its decoding keeps the one request the replica holds busy
    answers = asyncio.run(_post_many(tight, [(big, "image/png")] * 48))
    counts = collections.Counter(status for status, _, _ in answers)
    assert set(counts) <= {200, 503} and counts[503] > 0 and counts[200] > 0, counts
    assert all(h.get("retry-after") == "1" for status, h, _ in answers if status == 503)


def test_each_artifact_kind_is_served(service, request, tmp_path):
    _, kinds, (folder, uri, ref, versions) = service
    use_store(request, uri)
    x = np.load(folder / "x.npy")
    for (kind, url), index in zip(kinds.items(), (0, 1, 2, 4, 5), strict=True):
        (tmp_path / kind).mkdir()
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/{_version(versions, index)}", dst_path=str(tmp_path / kind))
        want = model.predict(x)
        status, _, body = post(url, _npy(x), "application/x-npy", accept="application/x-npy")
        assert status == 200, (kind, body[:300])
        assert np.allclose(np.load(io.BytesIO(body)), want, rtol=1e-4, atol=1e-5), kind


def test_loadtest_measures_the_service_with_loadgen_and_logs_it(service, tmp_path):
    url, _, (folder, uri, ref, versions) = service
    r = tuner("loadtest", url, "--scenario", "all", "--request", "jpeg", "--qps", "20", "--duration-s", "1",
              "--min-queries", "24", "--samples", "8", "--image-size", "640x480", "--output", str(tmp_path / "lt"),
              cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "lt" / "loadtest.json").read_text())
    runs = {s["scenario"]: s for s in doc["scenarios"]}
    assert list(runs) == ["single-stream", "offline", "server"]
    for s in runs.values():
        ran = s["result"] or s["steps"][-1]
        assert ran["completed"] >= 24 and ran["failed"] == {}, ran
        assert s["empty"]["completed"] >= 24  # the empty endpoint at the same rate
        # where each answer's time went, from the service's headers and the client's own clock
        stages = ran["stages"]
        assert list(stages) == ["ingress", "read", "decode", "queue", "handoff", "model", "answer"], stages
        assert stages["model"] > 0 and stages["decode"] > 0 and stages["ingress"] > 0
    assert runs["server"]["steps"][0]["target_qps"] == 20
    assert "synthetic photo-like JPEG images (8, 8 distinct, 640x480" in doc["bodies"] and doc["service"]["label"]
    assert "ms per answer: ingress" in r.stdout
    picture = tmp_path / "lt" / "loadtest.png"
    assert picture.stat().st_size > 10_000 and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the MLflow run: in the model's experiment, under the search that registered the pick
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tuner/tiny_models:small_cnn")
    (run,) = client.search_runs([exp.experiment_id], "tags.`tuner.kind` = 'loadtest'")
    mv = client.get_model_version(NAME, _version(versions, 0))
    assert run.data.tags["mlflow.parentRunId"] == mv.tags["tuner.search_run"]
    assert run.data.metrics["single_stream.completed"] >= 24 and "offline_ips" in run.data.metrics
    assert run.data.params["serve.max_batch_size"] == "4"
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"loadtest.json", "loadtest.png", "loadgen"} <= names
    assert run.data.metrics["offline.stage_model_ms"] > 0


def test_a_serving_trial_in_the_offline_scenario_deploys_measures_and_deletes_its_service(service, tmp_path):
    """serve/tuning.measure_service, as a serving search's trial runs it (`--scenario offline`):
    its own application, LoadGen's Offline run, the replica's node from its answers, deleted."""
    from ray import serve

    from tuner.config.space import ServingSettings
    from tuner.serve.source import resolve, spec_for
    from tuner.serve.tuning import measure_service

    url, _, (folder, uri, ref, versions) = service
    port = int(url.split(":")[2].split("/")[0])
    spec = spec_for(resolve(f"models:/{NAME}/{_version(versions, 0)}", uri), route_prefix="/offline-trial",
                    threads=1, max_batch_size=2, batch_wait_timeout_s=0.002)  # fmt: skip (the one CPU left)
    settings = ServingSettings(scenario="offline", duration_s=0.5, min_queries=50)
    m = measure_service(spec, "offline-trial", port, settings, tmp_path / "loadgen", print)
    figures = m.figures(settings.latency_bound_ms)
    assert m.objective() == figures["offline_ips"] > 0 and figures["failed"] == 0 and figures["completed"] >= 50
    assert m.replica_nodes() and 1 <= figures["batch_requests_max"] <= 2
    assert "offline-trial" not in serve.status().applications  # deleted
