"""CUDA path: the same build suite and protocol on a GPU. Skipped (and says so) without one;
run on a GPU machine with `python -m pytest -m gpu`."""

from __future__ import annotations

import copy

import pytest
import torch

from tuner.build import build
from tuner.config.space import TimingConfig
from tuner.core.variant import Variant
from tuner.inputs.models import ModelSpec
from tuner.inputs.reference import prepare_reference
from tuner.measure.accuracy import fidelity
from tuner.measure.hardware import detect
from tuner.trial.evaluate import TrialSettings, evaluate

from conftest import FAST_TIMING
from tiny_models import SmallCNN

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

# bf16 needs a GPU that runs it natively (compute capability 8.0+: Ampere and later); an older
# one is skipped with that reason, and the reduced-precision path is still run through fp16.
OLD_GPU = torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False)
NO_BF16 = "this GPU has no native bf16 (compute capability < 8.0)"


def _needs(params: dict[str, str]) -> object:
    if params.get("precision") in ("bf16", "tf32"):
        return pytest.param(params, marks=pytest.mark.skipif(OLD_GPU, reason=NO_BF16))
    return params


GPU_VARIANTS = [
    _needs(p)
    for p in (
        {},
        {"precision": "fp16"},
        {"precision": "bf16", "layout": "channels_last"},
        {"precision": "fp16", "compile": "torchscript"},
        {"precision": "bf16", "compile": "inductor"},
        {"precision": "fp16", "compile": "inductor_reduce_overhead"},  # CUDA graphs
        {"precision": "tf32", "layout": "channels_last"},
    )
]


@pytest.mark.parametrize("params", GPU_VARIANTS, ids=lambda p: Variant(**p).label)
def test_gpu_build_matches_fp32(params):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x[:4])
    built = build(copy.deepcopy(model), Variant(batch_size=4, **params), calibration=x[4:], device="cuda")
    with torch.inference_mode():
        out = built.run(built.prepare(x[:4]))
    assert out.device.type == "cuda"
    assert fidelity(out, ref)["cosine_similarity"] > 0.99


def test_gpu_hardware_profile_offers_fp16_and_not_int8():
    hw = detect()
    assert hw.device == "cuda" and hw.fp16_native and hw.bf16_native
    out = evaluate(
        Variant(quantization="static_int8"),  # type: ignore[arg-type]
        prepare_reference(ModelSpec("tiny_models:small_cnn", "random", 0), input_size=32, n_eval=8, n_calib=4),
        TrialSettings(TimingConfig(**FAST_TIMING)),
    )
    assert out.status == "infeasible"


def test_gpu_trial_reports_device_memory(small_reference):
    out = evaluate(Variant(precision="fp16", batch_size=4), small_reference, TrialSettings(TimingConfig(**FAST_TIMING)))  # type: ignore[arg-type]
    assert out.status == "ok", out.error
    assert out.peak_device_mb > 0 and out.cosine_similarity > 0.99


def test_gpu_search_runs_its_trials_on_the_gpu_without_being_told(tmp_path):
    """The whole chain on a real GPU: Ray's survey sees it, every trial reserves it (Ray would
    hide it otherwise), and the outputs say so. `--device cpu` then keeps it out of the trials."""
    import yaml

    from tuner.outputs.tables import read_trials

    from conftest import tuner, write_space

    space = write_space(tmp_path / "space.yaml", dimensions={"precision": ["fp32", "fp16"], "compile": ["eager"],
                        "batch_size": [1, 8], "layout": ["contiguous"]}, search={"trials": 3})  # fmt: skip
    base = ["search", "tiny_models:small_cnn", "--space", str(space), "--weights", "random"]
    r = tuner(*base, "--output", "gpu", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "device:  cuda (" in r.stdout
    rec = yaml.safe_load((tmp_path / "gpu" / "recommended.yaml").read_text())
    assert rec["device"] == "cuda"
    trials = read_trials(tmp_path / "gpu" / "trials.csv")
    assert (trials[trials["status"] == "ok"]["peak_device_mb"] > 0).all()  # the trials did use the GPU
    c = tuner(*base, "--output", "cpu", "--device", "cpu", cwd=tmp_path)
    assert c.returncode == 0, c.stdout[-3000:] + c.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "cpu" / "recommended.yaml").read_text())["device"] == "cpu"
    # torch saw no GPU in those trials (Ray hid it): no device memory figure
    assert read_trials(tmp_path / "cpu" / "trials.csv")["peak_device_mb"].isna().all()


def test_gpu_calls_are_timed_with_cuda_events_to_completion():
    """An asynchronous kernel is timed to its end: the event figure covers the GPU's work
    (which the host returns from at once) and is never more than the host's wall time."""
    import time

    from tuner.measure.latency import cuda_event_timer

    timer = cuda_event_timer()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu_s = timer(lambda: torch.cuda._sleep(50_000_000))  # tens of ms of GPU time
    wall_s = time.perf_counter() - t0
    assert 0.001 < gpu_s <= wall_s


def test_gpu_cuda_graph_outputs_survive_the_next_replay():
    """reduce-overhead replays a CUDA graph into the same buffers: each output is copied out,
    so one kept from an earlier call (as the accuracy pass keeps them) is not overwritten."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(8, 3, 32, 32)
    built = build(copy.deepcopy(model), Variant(batch_size=4, compile="inductor_reduce_overhead"),  # type: ignore[arg-type]
                  calibration=x[4:], device="cuda")  # fmt: skip
    with torch.inference_mode():
        first = built.run(built.prepare(x[:4]))
        kept = first.clone()
        built.run(built.prepare(x[4:]))
        assert torch.equal(first, kept)


def test_gpu_fp32_means_fp32_and_tf32_is_its_own_variant():
    """torch leaves TF32 on for cuDNN convolutions: an fp32 variant turns it off, tf32 on."""
    model, x = SmallCNN().eval(), torch.randn(8, 3, 32, 32)
    build(copy.deepcopy(model), Variant(batch_size=4), calibration=x[4:], device="cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    if not OLD_GPU:
        build(copy.deepcopy(model), Variant(batch_size=4, precision="tf32"), calibration=x[4:], device="cuda")  # type: ignore[arg-type]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
