"""Build one inference variant: precision -> quantize (calibrate) -> layout -> compile.

Each step is a small module with a `{choice: function}` table; `build()` applies them in
this fixed order and times the whole thing, including the first call, which is where
compiled variants pay for code generation (reported as `build_s`, never as latency).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tuner.build.compile import COMPILERS
from tuner.build.precision import DTYPES, apply_precision
from tuner.build.quantize import QUANTIZERS
from tuner.core.variant import Layout, Variant


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

    @property
    def sync(self) -> Callable[[], None] | None:
        """What to call after each timed call so asynchronous devices are timed to completion."""
        return torch.cuda.synchronize if self.device.type == "cuda" else None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """An fp32 NCHW batch -> this variant's device, dtype and layout (done before timing)."""
        x = x.to(self.device, self.input_dtype)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x


def build(model: nn.Module, variant: Variant, calibration: torch.Tensor, device: str = "cpu") -> BuiltVariant:
    """Apply the variant to (a copy-free, in-place modified) `model`; returns a callable.

    `calibration` is an fp32 batch of calibration inputs, used by static int8 only.
    Raises VariantUnsupported for an expected failure of this combination.
    """
    start = time.perf_counter()
    dev = torch.device(device)
    fmt = torch.channels_last if variant.layout is Layout.CHANNELS_LAST else torch.contiguous_format
    dtype = DTYPES[variant.precision]

    model = apply_precision(model.eval().to(dev), variant.precision)
    model = QUANTIZERS[variant.quantization](model, calibration.to(dev), variant.batch_size)
    if variant.layout is Layout.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)

    example = calibration[:1].expand(variant.batch_size, *calibration.shape[1:]).to(dev, dtype)
    example = example.contiguous(memory_format=fmt) if example.dim() == 4 else example
    with torch.inference_mode():
        run = COMPILERS[variant.compile](model, example)
        run(example)  # first call: compile / primitive creation, counted as build time
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return BuiltVariant(variant, run, model, dtype, fmt, dev, time.perf_counter() - start)
