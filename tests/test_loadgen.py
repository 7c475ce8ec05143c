"""MLPerf LoadGen over HTTP (tuner/serve/loadgen.py, loadtest.py), fast: a real LoadGen
against a small HTTP server in this process that runs the tiny model on .npy bodies. The
assertions are on counts (queries issued, answered, failed), never on speed; the server
scenario's search over QPS is checked on a stand-in for LoadGen whose verdict is known."""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.core.errors import ConfigError
from tuner.serve import loadtest
from tuner.serve.loadgen import RunResult, parse_summary, run_loadgen
from tuner.serve.loadtest import LoadTest, make_bodies, run_load_test

from tiny_models import small_cnn


class _Model(BaseHTTPRequestHandler):
    model = small_cnn().eval()
    seen = 0
    refuse_every = 0  # answer 503 to every n-th request (0: never)
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (BaseHTTPRequestHandler's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).seen += 1
            refuse = self.refuse_every and self.seen % self.refuse_every == 0
        if refuse:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.load(io.BytesIO(body)))).numpy()
        buf = io.BytesIO()
        np.save(buf, out)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-npy")
        self.send_header("X-Batch-Requests", "1")
        self.send_header("Content-Length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    _Model.seen, _Model.refuse_every = 0, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("scenario", ["single-stream", "offline", "server"])
def test_every_query_loadgen_issues_is_sent_and_counted(server, tmp_path, scenario):
    bodies, label = make_bodies("npy", 8, (3, 32, 32))
    r = run_loadgen(server, bodies, scenario, tmp_path / scenario, target_qps=200, duration_s=0.3, min_queries=40,
                    expected_qps=200, concurrency=4)  # fmt: skip
    assert r.completed >= 40 and r.completed == _Model.seen and r.failed == {}
    assert r.batch_requests == [1.0] * r.completed  # each answer's header, as the service said it
    assert r.p50_ms > 0 and r.qps > 0 and r.generator_cores >= 0
    assert (tmp_path / scenario / "mlperf_log_summary.txt").is_file()
    assert "[1, 3, 32, 32] float32" in label


def test_a_refused_request_is_a_failure_not_a_fast_answer(server, tmp_path):
    _Model.refuse_every = 4
    bodies, _ = make_bodies("npy", 8, (3, 32, 32))
    r = run_loadgen(server, bodies, "server", tmp_path, target_qps=200, latency_bound_ms=1000, duration_s=0.3,
                    min_queries=40)  # fmt: skip
    assert r.failed == {"503": _Model.seen // 4} and r.completed == _Model.seen
    assert r.constraints_ok and not r.meets_bound  # LoadGen saw fast answers; the refusals still fail it


def test_jpeg_bodies_are_real_images():
    from PIL import Image

    bodies, label = make_bodies("jpeg", 3, (3, 224, 224))
    assert len({b.data for b in bodies}) == 3 and all(b.content_type == "image/jpeg" for b in bodies)
    assert Image.open(io.BytesIO(bodies[0].data)).size == loadtest.JPEG_SIZE and "synthetic photo-like JPEG" in label
    # --image-size: over a megapixel, a few distinct images sent in turn (the label says how many)
    bodies, label = make_bodies("jpeg", 12, (3, 224, 224), size=(1920, 1080))
    assert Image.open(io.BytesIO(bodies[0].data)).size == (1920, 1080) and len({b.data for b in bodies}) == 8
    assert "12, 8 distinct, 1920x1080" in label


@pytest.mark.parametrize("text, size", [("500x375", (500, 375)), ("4032X3024", (4032, 3024))])
def test_image_size_is_read_as_width_x_height(text, size):
    assert loadtest.image_size(text) == size


@pytest.mark.parametrize("text", ["500", "x375", "0x10", "500x375x3", "99999x10"])
def test_a_bad_image_size_is_an_error_that_says_the_form(text):
    with pytest.raises(ConfigError, match=f"--image-size {text}: expected WIDTHxHEIGHT"):
        loadtest.image_size(text)


def test_the_summary_is_read_as_loadgen_writes_it():
    text = "Scenario : Server\nCompleted samples per second    : 94.84\nResult is : INVALID\n" \
           "  Performance constraints satisfied : Yes\n  Early stopping satisfied: NO\n" \
           "99.00 percentile latency (ns)   : 24287201\n"  # fmt: skip
    s = parse_summary(text)
    assert s["Completed samples per second"] == "94.84" and s["Early stopping satisfied"] == "NO"
    assert s["99.00 percentile latency (ns)"] == "24287201" and s["Result is"] == "INVALID"


def _fake_runs(capacity: float, calls: list[tuple[str, float | None]]):  # type: ignore[no-untyped-def]
    """A stand-in for run_loadgen: offline gives `capacity` images/s; a server run meets the
    bound exactly when its target QPS is at most 0.75 x capacity."""

    def run(url, bodies, scenario, log_dir, *, target_qps=None, **kw) -> RunResult:  # type: ignore[no-untyped-def]
        calls.append((scenario, target_qps))
        ok = scenario != "server" or target_qps <= 0.75 * capacity
        qps = capacity if scenario == "offline" else (target_qps or 10.0)
        return RunResult(scenario, url, target_qps, 100, {}, qps, 5.0, 8.0, 20.0 if ok else 500.0, ok, True, 0.1, 1.0)

    return run


def test_the_server_search_finds_the_highest_qps_that_meets_the_bound_within_its_steps(monkeypatch, tmp_path):
    calls: list[tuple[str, float | None]] = []
    monkeypatch.setattr(loadtest, "run_loadgen", _fake_runs(80.0, calls))
    t = LoadTest("http://x/", ("offline", "server"), max_steps=7, empty=False)
    lines: list[str] = []
    (offline, server) = run_load_test(t, [], Path(tmp_path), lines.append, None)
    assert offline.result is not None and offline.result.qps == 80.0
    assert server.result is not None and server.result.meets_bound
    assert 0.95 * 60 <= server.result.target_qps <= 60  # the true limit is 0.75 x 80 = 60 QPS
    assert 1 <= len(server.steps) <= 7 and calls[0] == ("offline", None)
    assert all(r.target_qps > server.result.target_qps for r in server.steps if not r.meets_bound)
    assert sum("server        step" in line for line in lines) == len(server.steps)  # progress per step


def test_a_bound_nothing_meets_says_so_with_the_best_p99(monkeypatch, tmp_path):
    monkeypatch.setattr(loadtest, "run_loadgen", _fake_runs(0.0, []))
    t = LoadTest("http://x/", ("server",), max_steps=3, empty=False, latency_bound_ms=15)
    (server,) = run_load_test(t, [], Path(tmp_path), lambda _: None, None)
    assert server.result is None and len(server.steps) == 3
    assert server.headline(15) == "no QPS tried meets p99 <= 15 ms (best p99 without failures 500.0 ms)"
