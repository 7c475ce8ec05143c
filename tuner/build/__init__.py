"""Build one inference variant: precision -> quantize (calibrate) -> layout -> compile.

Each step is a small module with a `{choice: function}` table; `build()` applies them in
this fixed order and times the whole thing, including the first call, which is where
compiled variants pay for code generation (reported as `build_s`, never as latency).

int8 depends on where the model runs: FX x86 for eager and TorchScript (quantize.py), PT2E
for inductor (pt2e.py). The other runtimes take the fp32 module and do all of it their own
way (`RUNTIMES`: onnxrt.py, openvino.py); their runners take and give torch tensors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from tuner.build import compile as compile_mod
from tuner.build import onnxrt, openvino
from tuner.build.compile import COMPILERS
from tuner.build.precision import DTYPES, apply_precision
from tuner.build.quantize import quantize
from tuner.build.runtime import Runtime, Stream, example_batch
from tuner.core.variant import Accepts, CompileMode, Device, Layout, Precision, Variant, infeasible_reason, refusal


@contextlib.contextmanager
def torch_settings_kept() -> Iterator[None]:
    """Restores the process-wide torch settings a build changes (the precision step's TF32
    switches, FX int8's quantized engine, a random-init load's seed, the threads) for a
    build outside a trial's own throw-away process: the driver's save of the pick
    (deploy/native.py), its profile, `measure`."""
    engine = torch.backends.quantized.engine
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    try:
        yield
    finally:
        torch.backends.quantized.engine = engine
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.set_rng_state(rng)
        torch.set_num_threads(threads)


def _onnxruntime(model: nn.Module, variant: Variant, calibration: torch.Tensor) -> Runtime:
    from tuner.build.onnxrt import build_onnxruntime  # onnx/onnxruntime load only when used

    return build_onnxruntime(model, variant, calibration)


def _openvino(model: nn.Module, variant: Variant, calibration: torch.Tensor) -> Runtime:
    from tuner.build.openvino import build_openvino

    return build_openvino(model, variant, calibration)


# What each compile mode runs, as its module declares it: the one table the sampler's
# conditional space, its inverse and the feasibility of a variant derive from.
ACCEPTS: dict[CompileMode, Accepts] = {**compile_mod.ACCEPTS, **onnxrt.ACCEPTS, **openvino.ACCEPTS}
assert set(ACCEPTS) == set(CompileMode), f"a compile mode declares nothing: {set(CompileMode) - set(ACCEPTS)}"


def infeasible(v: Variant, *, device: str = Device.CPU, fp16_native: bool, bf16_native: bool) -> str | None:
    """Why `v` cannot run here (the hardware, the install: core.variant.infeasible_reason) or
    at all (its runtime's declaration: ACCEPTS), else None."""
    return infeasible_reason(v, device=device, fp16_native=fp16_native, bf16_native=bf16_native) or refusal(
        v, ACCEPTS[v.compile]
    )


RUNTIMES: dict[CompileMode, Callable[[nn.Module, Variant, torch.Tensor], Runtime]] = {
    CompileMode.ONNXRUNTIME: _onnxruntime,
    CompileMode.OPENVINO: _openvino,
    CompileMode.OPENVINO_THROUGHPUT: _openvino,
}


@dataclass
class BuiltVariant:
    variant: Variant
    run: Callable[[torch.Tensor], torch.Tensor]  # call under torch.inference_mode()
    module: nn.Module  # the module before compilation (for its size)
    input_dtype: torch.dtype
    memory_format: torch.memory_format
    device: torch.device
    build_s: float
    # Figures of this runtime's own (e.g. which exporter it used), each declared in
    # core/schema.py; the trial reports them with the rest.
    figures: dict[str, float] = field(default_factory=dict)
    size_mb: float | None = None  # the artifact's size, where it is not `module`'s
    stream: Stream | None = None  # build/runtime.py: calls issued back to back (None: one at a time)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """An fp32 NCHW batch -> this variant's device, dtype and layout (done before timing).

        Always a fresh inference tensor, as the example that `build()` compiled with: a
        compiled graph guards on the input's dispatch keys, and an input made outside
        inference mode (a view of the eval set, say) would recompile it, without freezing.
        """
        return _inference_copy(x, self.device, self.input_dtype, self.memory_format)


def _inference_copy(
    x: torch.Tensor, device: torch.device, dtype: torch.dtype, fmt: torch.memory_format
) -> torch.Tensor:
    with torch.inference_mode():
        x = x.to(device, dtype)
        return x.clone(memory_format=fmt) if x.dim() == 4 else x.clone()


def build(model: nn.Module, variant: Variant, calibration: torch.Tensor, device: str = "cpu") -> BuiltVariant:
    """Apply the variant to (a copy-free, in-place modified) `model`; returns a callable.

    `calibration` is an fp32 batch of calibration inputs, used by static int8 only.
    Raises VariantUnsupported for an expected failure of this combination.
    """
    start = time.perf_counter()
    if variant.compile in RUNTIMES:
        rt = RUNTIMES[variant.compile](model.eval(), variant, calibration.cpu())
        # first call: the runtime's own lazy set-up, counted as build time
        rt.run(example_batch(calibration.cpu(), variant.batch_size))
        return BuiltVariant(variant, rt.run, model, DTYPES[Precision.FP32], torch.contiguous_format,
                            torch.device("cpu"), time.perf_counter() - start, rt.figures, rt.size_mb,
                            rt.stream)  # fmt: skip

    dev = torch.device(device)
    fmt = torch.channels_last if variant.layout is Layout.CHANNELS_LAST else torch.contiguous_format
    dtype = DTYPES[variant.precision]

    model = apply_precision(model.eval().to(dev), variant.precision)
    model = quantize(model, variant, calibration.to(dev))
    if variant.layout is Layout.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)

    example = _inference_copy(example_batch(calibration, variant.batch_size), dev, dtype, fmt)
    with torch.inference_mode():
        run = COMPILERS[variant.compile](model, example)
        run(example)  # first call: compile / primitive creation, counted as build time
        if dev.type == "cuda":
            torch.cuda.synchronize()
    figures = {"runtime_threads": float(torch.get_num_threads())}
    return BuiltVariant(variant, run, model, dtype, fmt, dev, time.perf_counter() - start, figures)
