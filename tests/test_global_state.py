"""A build in the driver's own process (the pick's save, its profile) leaves torch's
process-wide settings as it found them (build.torch_settings_kept): the quantized engine FX
int8 sets, the random state a random-init load seeds, the thread count. MLflow's
process-wide tracking and registry URIs are put back as they were, unset included, and a
Tracker registers in its own store whatever the process-wide registry says."""

from __future__ import annotations

import os

import mlflow
import torch
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry
from mlflow.tracking._tracking_service import utils as tracking

from tuner.build import build, torch_settings_kept
from tuner.core.variant import Variant
from tuner.tracking.store import Tracker, fluent_uri


def test_a_build_in_this_process_leaves_torch_as_it_found_it(small_reference):
    before_engine, before_threads = torch.backends.quantized.engine, torch.get_num_threads()
    torch.backends.quantized.engine = "fbgemm"  # not the x86 engine FX int8 asks for
    torch.manual_seed(1234)
    expected_draw = torch.rand(3, generator=torch.Generator().manual_seed(1234))
    try:
        with torch_settings_kept():
            torch.set_num_threads(1)
            variant = Variant.from_dict({"quantization": "static_int8", "compile": "eager", "threads": 1})
            built = build(small_reference.load_module(), variant, small_reference.data.calibration)  # seeds torch
            assert torch.backends.quantized.engine == "x86" and built.variant == variant
        assert torch.backends.quantized.engine == "fbgemm"
        assert torch.equal(torch.rand(3), expected_draw)  # the random stream goes on where it was
        assert torch.get_num_threads() == before_threads
    finally:
        torch.backends.quantized.engine = before_engine


def test_mlflow_uris_are_put_back_unset_and_a_tracker_registers_in_its_own_store(tmp_path, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(tracking, "_tracking_uri", None)
    monkeypatch.setattr(registry, "_registry_uri", None)
    a, b = (f"sqlite:///{tmp_path / name}.db" for name in ("a", "b"))
    with fluent_uri(a):
        assert mlflow.get_tracking_uri() == a and mlflow.get_registry_uri() == a
    # Unset again: not pinned to `a`, nor exported to the subprocesses started later.
    assert tracking._tracking_uri is None and registry._registry_uri is None
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ

    monkeypatch.setattr(registry, "_registry_uri", a)  # a process-wide registry another caller set
    tracker = Tracker(b, "tuner/test")
    tracker.client.create_registered_model("m")
    tracker.set_alias("m", "candidate", tracker.client.create_model_version("m", "file:///nowhere").version)
    assert str(MlflowClient(b, registry_uri=b).get_model_version_by_alias("m", "candidate").version) == "1"
    assert not MlflowClient(a, registry_uri=a).search_registered_models()
