"""ONNX Runtime: export with torch.onnx, quantize with onnxruntime.quantization, run an
`InferenceSession` on the CPU execution provider.

* Export: the dynamo exporter (`torch.onnx.export(..., dynamo=True)`); where it fails, the
  TorchScript exporter (`dynamo=False`). The figure `onnx_exporter_dynamo` says which.
  The exporter has had wrong-output bugs on ResNets (pytorch #169178, #166797): the trial's
  first-batch screen and accuracy pass compare every export with the fp32 torch reference,
  so a wrong export ends `inaccurate` and is never recommended.
* int8: `quant_pre_process` (shape inference, graph cleanup), then
  - static: `quantize_static`, QDQ format, per-channel int8 weights, uint8 activations,
    calibrated on the same calibration inputs as every other runtime;
  - dynamic: `quantize_dynamic`, int8 weights.
* Session: intra-op threads = the trial's threads, inter-op 1, sequential execution, every
  graph optimisation. The figure `runtime_threads` is what the session reports back.

The shape is static (the trial's batch size), as for every compiled variant here.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tuner.build.runtime import Runtime, example_batch, full_batches
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.variant import Accepts, CompileMode, Quantization, Variant

if TYPE_CHECKING:
    import onnxruntime


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> bool:
    """Write `model` as ONNX to `path`; True when the dynamo exporter did it, False when the
    TorchScript exporter had to. Raises VariantUnsupported when neither can."""
    errors = []
    for dynamo in (True, False):
        try:
            # The exporters print their progress and warn at length: kept out of trial logs.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), str(path), dynamo=dynamo, input_names=["input"],
                                  output_names=["output"], external_data=False)  # fmt: skip
            return dynamo
        except Exception as e:  # each exporter fails in its own ways; the next one is tried
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {one_line(e)}")
    raise VariantUnsupported("ONNX export failed: " + "; ".join(errors))


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader: the calibration inputs, one batch
    of the model's static shape at a time."""

    def __init__(self, name: str, calibration: torch.Tensor, batch_size: int):
        self._batches = iter([{name: b.numpy()} for b in full_batches(calibration, batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_onnx(src: Path, dst: Path, quantization: Quantization, calibration: torch.Tensor, batch: int) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = src.with_name("preprocessed.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre))
            if quantization is Quantization.STATIC_INT8:
                quantize_static(str(pre), str(dst), _Calibration("input", calibration, batch),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
            else:
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    except Exception as e:  # onnxruntime.quantization raises plain Exceptions of many kinds
        raise VariantUnsupported(f"ONNX Runtime {quantization.value} quantization failed: {one_line(e)}") from e


def session_settings(threads: int) -> dict[str, Any]:
    """`session_options` as plain values (what the registered model's loader rebuilds them from)."""
    so = session_options(threads)
    return {
        "intra_op_num_threads": so.intra_op_num_threads,
        "inter_op_num_threads": so.inter_op_num_threads,
        "execution_mode": so.execution_mode.name,
        "graph_optimization_level": so.graph_optimization_level.name,
    }


def session_options(threads: int) -> onnxruntime.SessionOptions:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return so


# What ONNX Runtime runs here (core.variant.Accepts): fp32 and int8 (QDQ, static or dynamic),
# NCHW input.
ACCEPTS = {
    CompileMode.ONNXRUNTIME: Accepts(
        float_precisions=False,
        layouts=False,
        why={"precision": "ONNX Runtime's CPU execution provider has no bf16/fp16 kernels for most operators"},
    )
}


def build_onnxruntime(model: nn.Module, variant: Variant, calibration: torch.Tensor) -> Runtime:
    import onnxruntime as ort

    # The files are needed only until the session holds the model (weights inline, not as
    # external data): a trial killed later leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix="tuner-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        dynamo = export_onnx(model, example_batch(calibration, variant.batch_size), path)
        if variant.quantization is not Quantization.NONE:
            quantized = path.with_name("model.int8.onnx")
            quantize_onnx(path, quantized, variant.quantization, calibration, variant.batch_size)
            path = quantized
        size_mb = os.path.getsize(path) / 2**20
        try:
            session = ort.InferenceSession(str(path), session_options(variant.threads),
                                           providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as e:  # onnxruntime's Fail/InvalidGraph/NotImplemented are plain Exceptions
            raise VariantUnsupported(f"ONNX Runtime could not load the exported model: {one_line(e)}") from e

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    return Runtime(
        run,
        size_mb=size_mb,
        figures={
            "onnx_exporter_dynamo": float(dynamo),
            "runtime_threads": float(session.get_session_options().intra_op_num_threads),
        },
    )
