"""The MLflow model of a tuner pick: its runtime's own artifact, loaded and run with the
settings it was measured with (docs/mlflow.md).

MLflow logs this file as the model's code ("models from code") and runs it when the model
is loaded, so it imports no tuner module: a deployment needs mlflow, numpy and the
runtime's package (torch, onnxruntime or openvino), never tuner. Everything it needs to
know comes in `context.model_config`, written by tuner/deploy/register.py:

    artifact        onnx | openvino | aoti | exported | torchscript
    batch_size      the static batch the artifact was built and measured for
    threads         the trial's threads (torch, ONNX Runtime and OpenVINO alike)
    input_dtype     float32 | bfloat16 | float16 (torch artifacts; inputs are cast to it)
    channels_last   torch artifacts: inputs converted to channels-last
    session         onnx: intra_op_num_threads, inter_op_num_threads, execution_mode,
                    graph_optimization_level
    compile         openvino: the compile_model properties; `requests` > 1 splits each
                    batch over that many infer requests run at once (the THROUGHPUT variant)
    optimize_for_inference   torchscript: as the `torchscript` compile mode measured it

`predict` takes an fp32 NCHW array of any length: it runs full batches of `batch_size`
(the last one padded by wrapping around to the first rows, as the trials did) and returns
one row of fp32 outputs per input row.

`predict` may be called from many threads at once (`mlflow models serve` runs requests on a
thread pool; `tuner serve` runs batches on an executor): ONNX Runtime's `run` and torch
modules in inference mode are safe to call concurrently (an AOTInductor package waits for
its runner), and OpenVINO gets an infer request per call from a pool (`_InferRequests`).
"""

from __future__ import annotations

import queue
import warnings
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

Runner = Callable[[np.ndarray], np.ndarray]


def onnx_session(path: str, cfg: dict[str, Any], profile_prefix: str | None = None) -> Any:
    """An InferenceSession on the CPU with the measured settings (tuner's profile of the pick
    uses it too, with ONNX Runtime's profiling on)."""
    import onnxruntime as ort

    s = cfg["session"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = s["intra_op_num_threads"]
    so.inter_op_num_threads = s["inter_op_num_threads"]
    so.execution_mode = getattr(ort.ExecutionMode, s["execution_mode"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, s["graph_optimization_level"])
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _onnx(path: str, cfg: dict[str, Any]) -> Runner:
    session = onnx_session(path, cfg)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


class _InferRequests:
    """OpenVINO infer requests for callers on many threads at once (a server's worker
    threads, a Ray Serve replica's executor). An InferRequest runs one inference at a time:
    shared between threads it fails with "Infer Request is busy". Each call takes idle
    requests from this pool, or creates new ones when none is idle, and gives them back."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def take(self, n: int) -> list[Any]:
        taken = []
        for _ in range(n):
            try:
                taken.append(self.idle.get_nowait())
            except queue.Empty:
                taken.append(self.compiled.create_infer_request())
        return taken

    def give_back(self, requests: list[Any]) -> None:
        for r in requests:
            self.idle.put(r)


def _openvino(path: str, cfg: dict[str, Any]) -> Runner:
    import openvino as ov

    props = dict(cfg["compile"])
    requests = int(props.pop("requests", 1))
    model = ov.Core().read_model(f"{path}/model.xml")
    shape = list(model.input(0).get_partial_shape().to_shape())
    model.reshape([cfg["batch_size"] // requests, *shape[1:]])
    pool = _InferRequests(ov.Core().compile_model(model, "CPU", props))

    def run(x: np.ndarray) -> np.ndarray:
        # One request per chunk: the THROUGHPUT variant splits its batch over `requests`
        # streams, run at once, as its trial measured it; the LATENCY one has one chunk.
        taken = pool.take(requests)
        try:
            for r, chunk in zip(taken, x.reshape(requests, len(x) // requests, *x.shape[1:]), strict=True):
                r.start_async([chunk], share_inputs=True)
            for r in taken:
                r.wait()
            return np.concatenate([r.get_output_tensor(0).data.copy() for r in taken])
        finally:
            pool.give_back(taken)

    return run


def _torch(load: Callable[[str, dict[str, Any]], Any]) -> Callable[[str, dict[str, Any]], Runner]:
    def loader(path: str, cfg: dict[str, Any]) -> Runner:
        import torch

        torch.set_num_threads(cfg["threads"])
        module = load(path, cfg)
        dtype = getattr(torch, cfg["input_dtype"])
        fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                t = torch.from_numpy(x).to(dtype).contiguous(memory_format=fmt)
                return module(t).float().numpy()

        return run

    return loader


def _aoti(path: str, cfg: dict[str, Any]) -> Any:
    """The package's runner. torch's loader unpacks the package into a new
    `$TMPDIR/aotinductor_XXXXXX` folder and leaves it there (about a model's weights on disk
    for every load). It unpacks into a folder of ours instead, removed once the runner is
    built: its shared object stays mapped, and its weights are in memory."""
    import os
    import tempfile

    import torch._inductor

    with tempfile.TemporaryDirectory(prefix="tuner-aoti-") as tmp:
        before = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = tmp  # read by the C++ loader (std::filesystem::temp_directory_path)
        try:
            return torch._inductor.aoti_load_package(path)
        finally:
            if before is None:
                del os.environ["TMPDIR"]
            else:
                os.environ["TMPDIR"] = before


def _exported(path: str, cfg: dict[str, Any]) -> Any:
    import torch

    return torch.export.load(path).module()


def _torchscript(path: str, cfg: dict[str, Any]) -> Any:
    import torch

    # TorchScript is deprecated in torch 2.14 and warns on every call below; it is kept only
    # for what nothing else reproduces (FX int8, the `torchscript` compile mode), and the
    # model's description says so: the warnings are not the user's to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # Saved unfrozen (a frozen graph may not load back: "required keyword attribute
        # 'value' is undefined"); freezing here gives the graph that was measured.
        module = torch.jit.freeze(torch.jit.load(path, map_location="cpu").eval())
        if cfg.get("optimize_for_inference"):
            module = torch.jit.optimize_for_inference(module)
    return module


LOADERS: dict[str, Callable[[str, dict[str, Any]], Runner]] = {
    "onnx": _onnx,
    "openvino": _openvino,
    "aoti": _torch(_aoti),
    "exported": _torch(_exported),
    "torchscript": _torch(_torchscript),
}


class TunedModel(PythonModel):
    """The pick's artifact behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        self.config = dict(context.model_config)
        self.batch_size = int(self.config["batch_size"])
        self.runner = LOADERS[self.config["artifact"]](context.artifacts["model"], self.config)

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        x = np.ascontiguousarray(model_input, dtype=np.float32)
        n, b = len(x), self.batch_size
        if n == 0:
            raise ValueError("predict: an empty batch")
        if n % b:  # pad the last batch by wrapping around, as the trials did
            x = np.concatenate([x, x[np.arange((-n) % b) % n]])
        outs = [self.runner(np.ascontiguousarray(x[i : i + b])) for i in range(0, len(x), b)]
        return np.concatenate(outs)[:n].astype(np.float32, copy=False)


mlflow.models.set_model(TunedModel())
