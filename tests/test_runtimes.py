"""The runtimes beside torch (ONNX Runtime, OpenVINO, PT2E int8 on inductor), each built and
measured for real on tiny models: it builds, it runs with the trial's threads, int8 keeps
top-1 on labeled data, and a failed or wrong export is classified, never recommended."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tuner.build import build
from tuner.config.space import TimingConfig
from tuner.core.errors import VariantUnsupported
from tuner.core.variant import Variant
from tuner.inputs.models import ModelSpec, resolve_weights
from tuner.inputs.reference import prepare_reference
from tuner.measure.hardware import detect
from tuner.outputs.tables import read_trials
from tuner.trial.evaluate import TrialSettings, evaluate

from conftest import FAST_TIMING, tuner, write_space
from tiny_models import SharedResidual, Unexportable, train_small_cnn

SETTINGS = TrialSettings(TimingConfig(**FAST_TIMING))

RUNTIMES = ["onnxruntime", "openvino", "openvino_throughput"]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """The SmallCNN trained on three separable colour classes, with its labeled val set."""
    root = tmp_path_factory.mktemp("trained")
    train_small_cnn(root)
    spec = resolve_weights(ModelSpec("tiny_models:small_cnn", str(root / "small_cnn.pt")))
    return prepare_reference(spec, input_size=32, n_eval=24, n_calib=8, data_dir=root / "val")


@pytest.mark.parametrize(
    "params",
    [
        dict(compile="onnxruntime"),
        dict(compile="onnxruntime", quantization="static_int8"),
        dict(compile="onnxruntime", quantization="dynamic_int8"),
        dict(compile="openvino"),
        dict(compile="openvino", quantization="static_int8"),
        dict(compile="openvino_throughput", quantization="static_int8"),
        pytest.param(
            dict(compile="openvino", quantization="static_int8", precision="bf16"),
            marks=pytest.mark.skipif(not detect().bf16_native, reason="bf16 is not native on this host"),
        ),
        dict(compile="inductor", quantization="static_int8"),  # PT2E
        dict(compile="inductor", quantization="dynamic_int8"),
    ],
    ids=lambda p: Variant(batch_size=2, **p).label if isinstance(p, dict) else None,
)
def test_runtime_keeps_top1_on_labeled_data_and_uses_the_trials_threads(labeled, params):
    for threads in (1, 2):
        out = evaluate(Variant(batch_size=2, threads=threads, **params), labeled, SETTINGS)
        assert out.status == "ok", out.error
        # what the runtime itself reports: ORT's session options, OpenVINO's compiled model
        # property, torch.get_num_threads() in the trial's process
        assert out.runtime_threads == threads, (params, out.runtime_threads)
    assert out.top1 is not None and out.accuracy_drop <= 0.01, (out.top1, labeled.baseline_quality)
    assert out.cosine_similarity > 0.98
    if params["compile"] == "onnxruntime":
        assert out.onnx_exporter_dynamo == 1.0  # the dynamo exporter handles this model
    if params["compile"] == "openvino_throughput":
        assert out.runtime_requests is not None and out.runtime_requests >= 1
    else:  # one call at a time: the stream is the closed loop
        assert out.stream_ips == out.throughput_ips


def test_openvino_throughput_is_streamed_with_its_queue_kept_full(small_reference):
    """The THROUGHPUT variant's stream (build/runtime.py `Stream`) is measured in trials and
    in confirmation measurements alike: its figure is its own measurement, not the calls'."""
    from tuner.trial.evaluate import STREAM_WINDOWS, time_variant

    variant = Variant(compile="openvino_throughput", batch_size=4, threads=2)
    out = evaluate(variant, small_reference, SETTINGS)
    assert out.status == "ok", out.error
    assert out.stream_ips > 0 and out.stream_ips != out.throughput_ips
    timed = time_variant(variant, small_reference, SETTINGS)
    assert len(timed["stream_rates"]) == STREAM_WINDOWS and min(timed["stream_rates"]) > 0


@pytest.mark.parametrize("compile_", RUNTIMES)
def test_a_model_no_exporter_can_convert_fails_as_unsupported(compile_):
    with pytest.raises(VariantUnsupported, match="ONNX export failed|OpenVINO conversion failed"):
        build(Unexportable().eval(), Variant(compile=compile_, batch_size=2), torch.randn(4, 3, 32, 32))  # type: ignore[arg-type]


def test_a_failed_export_is_a_failed_trial_and_says_why():
    ref = prepare_reference(ModelSpec("tiny_models:untraceable", "random", 0), input_size=32, n_eval=4, n_calib=4)
    # torch.export (strict) refuses the data-dependent branch: PT2E int8 cannot start
    out = evaluate(Variant(compile="inductor", quantization="static_int8"), ref, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "failed" and "torch.export (strict) failed" in out.error, out.error


def _seed_where_signs_differ() -> int:
    """A data seed whose first eval input and first calibration input have row means of
    opposite sign (so the exported branch is the wrong one for the first eval row)."""
    for seed in range(50):
        ref = prepare_reference(ModelSpec("tiny_models:row_branch", "random", seed), input_size=32, n_eval=4, n_calib=4)
        if (ref.data.inputs[0].mean() > 0) != (ref.data.calibration[0].mean() > 0):
            return seed
    raise AssertionError("no seed in 0..49 gives opposite signs")


def test_a_wrong_export_is_caught_as_inaccurate():
    seed = _seed_where_signs_differ()
    ref = prepare_reference(ModelSpec("tiny_models:row_branch", "random", seed), input_size=32, n_eval=4, n_calib=4)
    out = evaluate(Variant(compile="onnxruntime"), ref, SETTINGS)  # type: ignore[arg-type]
    assert out.status == "inaccurate" and "cosine" in out.error, (out.status, out.error)


def test_pt2e_quantizes_the_shared_residual_shape_that_non_strict_export_breaks():
    model = SharedResidual().eval()
    x = torch.randn(12, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x[:4])
    built = build(copy.deepcopy(model), Variant(compile="inductor", quantization="static_int8", batch_size=4), x[4:])  # type: ignore[arg-type]
    with torch.inference_mode():
        out = built.run(built.prepare(x[:4]))
    assert torch.nn.functional.cosine_similarity(out, ref).min() > 0.98


@pytest.mark.slow
def test_a_search_measures_every_runtime_end_to_end(tmp_path):
    """The real CLI: one search over every runtime (each enqueued once, so a small budget
    sees all of them); then `measure --config` of a runtime variant."""
    enqueue = [
        {"compile": "onnxruntime"},
        {"quantization": "static_int8", "compile": "openvino"},
        {"quantization": "static_int8", "compile": "inductor"},  # PT2E
        {"quantization": "static_int8", "compile": "onnxruntime"},
        {"quantization": "static_int8", "compile": "openvino_throughput", "batch_size": 2},
    ]
    space = write_space(
        tmp_path / "space.yaml",
        search={"trials": 6, "enqueue": enqueue},
        dimensions={"quantization": ["none", "static_int8"], "batch_size": [1, 2], "threads": [1],
                    "compile": ["eager", "inductor", "onnxruntime", "openvino", "openvino_throughput"]},
    )  # fmt: skip
    r = tuner("search", "tiny_models:small_cnn", "--space", str(space), "--weights", "random", "--output", "out",
              cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    trials = read_trials(tmp_path / "out" / "trials.csv")
    ok = trials[trials["status"] == "ok"]
    assert set(ok["compile"]) == {"eager", "inductor", "onnxruntime", "openvino", "openvino_throughput"}, trials
    assert (ok["runtime_threads"] == 1).all()  # each runtime reports the trial's one thread
    assert "int8-static bs2 t1 ov-tput nchw" in set(ok["label"])
    streamed = ok["compile"].eq("openvino_throughput")  # the one runtime that runs several calls at once
    assert (ok.loc[~streamed, "stream_ips"] == ok.loc[~streamed, "throughput_ips"]).all()
    tput = ok[streamed]
    assert (tput["stream_ips"] > 0).all() and (tput["stream_ips"] != tput["throughput_ips"]).all()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuner/tiny_models:small_cnn")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`tuner.status` = 'ok'")
    assert {"onnxruntime", "openvino", "openvino_throughput"} <= {run.data.params.get("compile") for run in runs}

    (tmp_path / "ov.yaml").write_text(yaml.safe_dump({"variant": {"quantization": "static_int8", "compile": "openvino",
                                                                  "batch_size": 2, "threads": 1}}))  # fmt: skip
    m = tuner("measure", "tiny_models:small_cnn", "--config", str(tmp_path / "ov.yaml"), "--space", str(space),
              "--weights", "random", "--json", cwd=tmp_path)  # fmt: skip
    assert m.returncode == 0, m.stdout + m.stderr
    fig = json.loads(m.stdout.strip().splitlines()[-1])
    assert fig["status"] == "ok" and fig["compile"] == "openvino" and fig["runtime_threads"] == 1
