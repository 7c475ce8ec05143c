"""OpenVINO: `ov.convert_model` from the torch module, NNCF for int8, the CPU plugin.

* `openvino`: `compile_model` with `PERFORMANCE_HINT` LATENCY, `NUM_STREAMS` 1 and
  `INFERENCE_NUM_THREADS` = the trial's threads: one request runs the whole batch.
* `openvino_throughput`: the THROUGHPUT hint says how many parallel requests it wants
  (`OPTIMAL_NUMBER_OF_INFER_REQUESTS`); the batch is split evenly over that many (kept to
  a divisor of the batch), the model compiled again for the smaller batch with one stream
  per request and all of the trial's threads, and run through an `AsyncInferQueue`. One
  call is still one whole batch, so latency and throughput mean what they mean for every
  other variant. Its `stream_ips` (core/schema.py) is measured with the queue kept full
  across calls, as OpenVINO's throughput recipe runs it: the queue drains at the end of
  every call otherwise.
* Precision: `INFERENCE_PRECISION_HINT` f32, bf16 or f16, always set. Left unset, the CPU
  plugin runs fp32 models in bf16 on CPUs that have it natively (AVX512_BF16, AMX), and a
  variant labelled fp32 would not be fp32.
* int8: `nncf.quantize` with its defaults (the PERFORMANCE preset, fast bias correction) on
  the same calibration inputs as every other runtime; the layers left in float run at the
  precision hint (f32 for int8 variants).

Inputs are shared with OpenVINO, not copied (`share_inputs=True`), as torch and ONNX Runtime
read theirs in place. `runtime_threads` is what the compiled model reports for
`INFERENCE_NUM_THREADS`; `model_size_mb` is the size of the IR's constants (fp32 weights, or
int8 after NNCF, whatever precision hint the plugin then computes in).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tuner.build.compile import Runner
from tuner.build.runtime import Runtime, Stream
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.variant import Accepts, CompileMode, Precision, Quantization, Variant

if TYPE_CHECKING:
    import openvino as ov

# What OpenVINO runs (core.variant.Accepts): static int8 (NNCF) with its layers left in float
# at the precision hint, NCHW input; the THROUGHPUT hint needs a batch to split.
_OV = Accepts(
    int8=(Quantization.STATIC_INT8,),
    int8_float_precision=True,
    layouts=False,
    why={"int8": "OpenVINO has no dynamic int8 for a float model on the CPU (NNCF quantizes statically)"},
)
ACCEPTS = {
    CompileMode.OPENVINO: _OV,
    CompileMode.OPENVINO_THROUGHPUT: dataclasses.replace(
        _OV,
        min_batch=2,
        why={**_OV.why, "batch": "the THROUGHPUT hint splits a batch over parallel requests: "
             "batch 1 has nothing to split"},  # fmt: skip
    ),
}

PRECISION_HINT = {Precision.FP32: "f32", Precision.BF16: "bf16", Precision.FP16: "f16"}


def convert(model: nn.Module, variant: Variant, calibration: torch.Tensor) -> ov.Model:
    """The torch module as an OpenVINO model of one input (batch 1), int8 if asked."""
    import openvino as ov

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ov_model = ov.convert_model(model, example_input=calibration[:1], input=[tuple(calibration[:1].shape)])
    except Exception as e:  # conversion raises OpConversionFailure, RuntimeError, TypeError, ...
        raise VariantUnsupported(f"OpenVINO conversion failed: {one_line(e)}") from e
    if variant.quantization is Quantization.STATIC_INT8:
        import nncf

        nncf.set_log_level(logging.ERROR)
        try:  # NNCF draws progress bars on stdout: kept out of trial logs
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                data = nncf.Dataset([c.numpy() for c in calibration.split(1)])
                ov_model = nncf.quantize(ov_model, data, subset_size=len(calibration))
        except Exception as e:
            raise VariantUnsupported(f"NNCF int8 quantization failed: {one_line(e)}") from e
    return ov_model


def _compile(ov_model: ov.Model, batch: int, config: dict[str, Any]) -> ov.CompiledModel:
    import openvino as ov

    shape = list(ov_model.input(0).get_partial_shape().to_shape())
    ov_model.reshape([batch, *shape[1:]])
    try:
        return ov.Core().compile_model(ov_model, "CPU", config)
    except Exception as e:
        raise VariantUnsupported(f"OpenVINO compile_model failed: {one_line(e)}") from e


def build_openvino(model: nn.Module, variant: Variant, calibration: torch.Tensor) -> Runtime:
    ov_model = convert(model, variant, calibration)
    size_mb = sum(op.get_byte_size() for op in ov_model.get_ops() if op.get_type_name() == "Constant") / 2**20
    stream = None
    if variant.compile is CompileMode.OPENVINO:
        compiled = _compile(ov_model, variant.batch_size, compile_properties(variant, 1))
        run, requests = _latency_runner(compiled), 1
    else:
        run, stream, compiled, requests = _throughput_runner(ov_model, variant)
    figures = {
        "runtime_threads": float(compiled.get_property("INFERENCE_NUM_THREADS")),
        "runtime_requests": float(requests),
    }
    return Runtime(run, size_mb=size_mb, figures=figures, stream=stream)


def _latency_runner(compiled: ov.CompiledModel) -> Runner:
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer([x.numpy()], share_inputs=True)[0])

    return run


def compile_properties(variant: Variant, requests: int) -> dict[str, Any]:
    """What `compile_model` gets for this variant (the registered IR is compiled with the same):
    the trial's threads and precision hint; LATENCY with one stream, or THROUGHPUT with one
    stream per request."""
    props: dict[str, Any] = {"INFERENCE_NUM_THREADS": variant.threads,
                             "INFERENCE_PRECISION_HINT": PRECISION_HINT[variant.precision]}  # fmt: skip
    if variant.compile is CompileMode.OPENVINO:
        return {**props, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    return {**props, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": requests}


def _throughput_runner(ov_model: ov.Model, variant: Variant) -> tuple[Runner, Stream, ov.CompiledModel, int]:
    """The batch split over the requests the THROUGHPUT hint asks for, run asynchronously: one
    call waits for its batch (`run`); a stream (`stream`) keeps every request busy across calls."""
    import openvino as ov

    batch = variant.batch_size
    hint = {k: v for k, v in compile_properties(variant, 0).items() if k != "NUM_STREAMS"}
    hinted = _compile(ov_model, batch, hint)
    requests = math.gcd(batch, int(hinted.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    # One stream per request, sharing all of the trial's threads: the hint's own stream count
    # may not divide the batch, and streams without a request would leave threads idle.
    compiled = _compile(ov_model, batch // requests, compile_properties(variant, requests))
    queue = ov.AsyncInferQueue(compiled, requests)
    outputs: list[np.ndarray | None] = [None] * requests
    # A call's requests are numbered (its outputs are kept, in order); a stream's are not.
    queue.set_callback(
        lambda request, i: i is None or outputs.__setitem__(i, request.get_output_tensor(0).data.copy())
    )

    def chunks(x: torch.Tensor) -> np.ndarray:
        return x.numpy().reshape(requests, batch // requests, *x.shape[1:])

    def run(x: torch.Tensor) -> torch.Tensor:
        outputs[:] = [None] * requests
        for i, chunk in enumerate(chunks(x)):
            queue.start_async([chunk], i, share_inputs=True)
        queue.wait_all()
        done = [o for o in outputs if o is not None]
        if len(done) < requests:
            raise VariantUnsupported(f"OpenVINO: {requests - len(done)} of {requests} requests returned no output")
        return torch.from_numpy(np.concatenate(done))

    def stream(batches: Iterator[torch.Tensor], seconds: float) -> float:
        # start_async blocks while every request is busy and returns as soon as one is free:
        # the next batch's chunks go in while this one's are still running.
        items, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for chunk in chunks(next(batches)):
                queue.start_async([chunk], None, share_inputs=True)
            items += batch
        queue.wait_all()
        return items / (time.perf_counter() - start)

    return run, stream, compiled, requests
