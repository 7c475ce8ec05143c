"""What `tuner serve` takes and answers (tuner/serve/payload.py) and the settings it runs
with (tuner/serve/spec.py, source.for_serving): pure functions, hand-made inputs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tuner.core.errors import ConfigError
from tuner.inputs.images import ImagePrep
from tuner.serve.payload import BadRequest, answer, check_rows, decode, kind_of, top_k_param
from tuner.serve.source import for_serving
from tuner.serve.spec import ServeSpec

SHAPE = (3, 8, 8)


PREP = ImagePrep(resize=9, crop=8, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _preprocess(body: bytes) -> tuple[np.ndarray, int]:
    return PREP(body, fast=True, max_pixels=10**6)


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def _image(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "body, content_type, kind",
    [
        (_image("JPEG"), "image/jpeg", "image"),
        (_image("PNG"), "", "image"),  # sniffed
        (_image("PNG"), "application/octet-stream", "image"),
        (_npy(np.zeros((1, *SHAPE), np.float32)), "application/x-npy", "tensor"),
        (_npy(np.zeros(SHAPE, np.float32)), "", "tensor"),
        (b'{"inputs": []}', "application/json; charset=utf-8", "json"),
        (b' {"instances": []}', "application/x-www-form-urlencoded", "json"),  # curl -d's default type
    ],
)
def test_each_request_kind_is_recognised(body, content_type, kind):
    assert kind_of(body, content_type) == kind


@pytest.mark.parametrize(
    "body, content_type, status, fragment",
    [
        (b"", "image/jpeg", 400, "an empty body"),
        (b"hello", "text/plain", 415, "Content-Type 'text/plain' is not served"),
        (b"hello", "", 415, "neither an image, an .npy array nor JSON"),
    ],
)
def test_what_is_not_a_request_is_refused_by_name(body, content_type, status, fragment):
    with pytest.raises(BadRequest) as e:
        kind_of(body, content_type)
    assert e.value.status == status and fragment in e.value.message


def test_an_image_is_decoded_and_preprocessed_into_one_row():
    d = decode(_image("JPEG"), "image", SHAPE, 4, _preprocess)
    assert d.rows.shape == (1, *SHAPE) and d.rows.dtype == np.float32 and d.kind == "image"
    assert d.preprocess_ms > 0


def test_tensor_and_json_rows_arrive_unchanged():
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    assert np.array_equal(decode(_npy(x), "tensor", SHAPE, 4, _preprocess).rows, x)
    assert np.array_equal(decode(_npy(x[0]), "tensor", SHAPE, 4, _preprocess).rows, x[:1])  # [C, H, W]: one row
    body = json.dumps({"inputs": x.tolist()}).encode()
    assert np.allclose(decode(body, "json", SHAPE, 4, _preprocess).rows, x)


@pytest.mark.parametrize(
    "body, kind, status, fragment",
    [
        (b"\xff\xd8\xff not really a jpeg", "image", 400, "not a readable image"),
        (b"\x93NUMPY broken", "tensor", 400, "not a readable .npy array"),
        (_npy(np.zeros((1, 3, 9, 9), np.float32)), "tensor", 422, "shape [1, 3, 9, 9]; this model takes [N, 3, 8, 8]"),
        (_npy(np.zeros((0, *SHAPE), np.float32)), "tensor", 422, "no rows"),
        (_npy(np.zeros((5, *SHAPE), np.float32)), "tensor", 413, "5 rows in one request; at most 4"),
        (_npy(np.full((1, *SHAPE), np.nan, np.float32)), "tensor", 422, "NaN or infinite"),
        (_npy(np.array(["a"] * 192).reshape(1, *SHAPE)), "tensor", 422, "dtype <U1"),
        (b'{"data": [1]}', "json", 400, 'needs an "inputs" or "instances" key'),
        (b'{"inputs": [[1, 2], [3]]}', "json", 422, "not a numeric array"),
        (b"{not json", "json", 400, "not valid JSON"),
    ],
)
def test_a_bad_body_is_a_4xx_that_names_the_problem(body, kind, status, fragment):
    with pytest.raises(BadRequest) as e:
        decode(body, kind, SHAPE, 4, _preprocess)
    assert e.value.status == status and fragment in e.value.message, e.value.message


def test_check_rows_takes_any_number_type_as_float32():
    assert check_rows(np.ones((1, *SHAPE), np.float64), SHAPE, 1).dtype == np.float32


def test_answers_top_k_with_names_npy_or_mlflow_predictions():
    out = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]], np.float32)
    body, media = answer(out, "image", "", None, 2, ["cat", "dog", "fox"])
    top = json.loads(body)["top_k"]
    assert media == "application/json" and [[c["class"] for c in row] for row in top] == [[1, 2], [0, 1]]
    assert top[0][0]["name"] == "dog" and top[0][0]["score"] == pytest.approx(np.exp(3) / np.exp([0, 3, 1]).sum())
    body, media = answer(out, "tensor", "", None, 2, None)
    assert json.loads(body) == {"predictions": out.tolist()}
    body, media = answer(out, "tensor", "application/x-npy", None, 2, None)
    assert media == "application/x-npy" and np.array_equal(np.load(io.BytesIO(body)), out)
    body, _ = answer(out, "json", "", 1, 2, None)  # ?top_k=1 on a JSON request
    assert json.loads(body)["top_k"][1] == [{"class": 0, "name": None, "score": pytest.approx(0.787, abs=1e-3)}]


@pytest.mark.parametrize("value", ["0", "4", "x", "-1"])
def test_top_k_out_of_range_is_refused(value):
    with pytest.raises(BadRequest, match="allowed: 1 to 3"):
        top_k_param(value, 3)


FIXED = dict(model_uri="models:/m/1", location="file:///x/m-1/artifacts", tracking_uri="sqlite:////x.db",
             model="resnet50", weights="random", input_shape=(3, 8, 8), artifact="onnx", artifact_batch=4,
             label="fp32 bs4 t1 ort nchw")  # fmt: skip


def test_the_picks_defaults_batch_its_batch_size_and_hold_two_batches():
    spec = ServeSpec.for_model(FIXED, confirmed_p50_ms=20.0)
    assert (spec.max_batch_size, spec.batch_wait_timeout_s, spec.max_ongoing_requests) == (4, 0.01, 8)
    assert spec.max_queued_requests == 32 and spec.replicas == 1
    one = ServeSpec.for_model({**FIXED, "artifact_batch": 1}, confirmed_p50_ms=None)
    assert (one.max_batch_size, one.batch_wait_timeout_s, one.max_ongoing_requests) == (1, 0.0, 2)
    chosen = ServeSpec.for_model(FIXED, 20.0, max_batch_size=2, replicas=2, batch_wait_timeout_s=None)
    assert (chosen.max_batch_size, chosen.max_ongoing_requests, chosen.max_queued_requests) == (2, 4, 32)


def test_a_spec_survives_its_serve_config_args():
    spec = ServeSpec.for_model(FIXED, 20.0, replicas=2)
    assert ServeSpec.from_args(json.loads(json.dumps(spec.to_args()))) == spec


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"replicas": 0}, "`replicas` is 0; allowed: at least 1"),
        ({"max_queued_requests": 0}, "allowed: -1 (no limit) or >= 1"),
        ({"batch_wait_timeout_s": -1}, "allowed: 0 to 10 seconds"),
        ({"ingress": "nginx"}, "`ingress` is 'nginx'; allowed: haproxy, proxy"),
        ({"route_prefix": "api"}, "must start with /"),
    ],
)
def test_a_bad_setting_names_the_field_and_what_is_allowed(change, fragment):
    with pytest.raises(ConfigError) as e:
        ServeSpec(**{**FIXED, **change})
    assert fragment in str(e.value)


def test_max_ongoing_below_the_batch_is_refused():
    with pytest.raises(ConfigError, match="a replica would never hold a full batch"):
        ServeSpec.for_model(FIXED, 20.0, max_ongoing_requests=2)


def test_serve_config_args_are_read_strictly():
    args = ServeSpec.for_model(FIXED, 20.0).to_args()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['replica'\]"):
        ServeSpec.from_args({**args, "replica": 2}, "serve_config.yaml")
    with pytest.raises(ConfigError, match="`replicas` is 'two'; expected an integer"):
        ServeSpec.from_args({**args, "replicas": "two"})
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['model_uri'\]"):
        ServeSpec.from_args({k: v for k, v in args.items() if k != "model_uri"})


def test_a_replica_runs_its_own_threads_and_openvino_does_not_pin_cores():
    config = {"threads": 2, "session": {"intra_op_num_threads": 2, "execution_mode": "ORT_SEQUENTIAL"},
              "compile": {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}}  # fmt: skip
    got = for_serving(config, 1)
    assert got["threads"] == 1 and got["session"] == {"intra_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL"}
    assert got["compile"] == {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
    assert for_serving({"threads": 2}, 3) == {"threads": 3}  # a torch artifact


def test_the_first_calls_line_compares_with_the_confirmed_p50_and_warns_over_1_2x():
    from tuner.serve.service import first_calls

    line, slow = first_calls({"first_calls_ms": [1.0, 1.1, 1.2], "artifact_batch": 4, "confirmed_p50_ms": 1.0})
    assert not slow
    assert line == "a replica's first 3 calls (batch 4): median 1.10 ms, 1.10x the registered confirmed p50 1.00 ms"
    line, slow = first_calls({"first_calls_ms": [2.5] * 10, "artifact_batch": 1, "confirmed_p50_ms": 2.0})
    assert slow and "1.25x the registered confirmed p50 2.00 ms (over 1.2x:" in line
    line, slow = first_calls({"first_calls_ms": [3.0], "confirmed_p50_ms": None})
    assert not slow and line.endswith("(the model carries no confirmed p50 to compare with)")
    assert first_calls({}) == ("", False)  # a service that does not say


@pytest.mark.parametrize(
    "tags, flag, path, why",
    [
        ((), None, "exact", "carries no measured agreement"),
        ((("fast", "true"), ("agreement", "1.0000"), ("judged_by", "top-1"), ("images", "12"), ("limit", "0.01")),
         None, "fast", "top-1 agreement 1.0000 on 12, within the search's limit 0.01"),
        ((("fast", "false"), ("agreement", "0.9000"), ("judged_by", "top-1"), ("images", "12"), ("limit", "0.01")),
         "auto", "exact", "outside the search's limit 0.01"),
        ((("fast", "false"),), "fast", "fast", "--decode fast"),
        ((("fast", "true"),), "exact", "exact", "--decode exact"),
    ],
)  # fmt: skip
def test_the_decode_path_follows_the_registered_agreement_unless_a_flag_forces_it(tags, flag, path, why):
    from tuner.serve.source import Source, decode_for

    source = Source("models:/m/1", "/x", "sqlite:///x", {}, (3, 8, 8), decode=tags)
    got, reason = decode_for(source, flag)
    assert got == path and why in reason
    with pytest.raises(ConfigError, match="--decode quick: allowed: auto, fast, exact"):
        decode_for(source, "quick")
