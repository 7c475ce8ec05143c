"""Compile step: eager, TorchScript (trace + freeze + optimize_for_inference) or inductor.

Inductor runs with `freezing=True` (weights folded as constants, oneDNN weight prepacking
on the CPU): 40 ms against 75 ms for plain `torch.compile` on resnet50 here. The config is
patched only while the first call compiles (inside `build()`), then restored; trials run
in fresh processes anyway, so nothing leaks into the next variant.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.variant import Accepts, CompileMode, Quantization

Runner = Callable[[torch.Tensor], torch.Tensor]


def _eager(model: nn.Module, example: torch.Tensor) -> Runner:
    return model


def _torchscript(model: nn.Module, example: torch.Tensor) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
            return torch.jit.optimize_for_inference(frozen)
        except RuntimeError as e:
            raise VariantUnsupported(f"TorchScript trace/freeze failed: {one_line(e)}") from e


def _inductor(mode: str | None) -> Callable[[nn.Module, torch.Tensor], Runner]:
    def compile_(model: nn.Module, example: torch.Tensor) -> Runner:
        import torch._inductor.config as inductor_config

        compiled = torch.compile(model, mode=mode, dynamic=False)
        # torch.compile is lazy: the first call compiles, and freezing must be on while it does.
        with inductor_config.patch(freezing=example.device.type == "cpu"):
            compiled(example)
        if mode != "reduce-overhead":
            return compiled

        def replayed(x: torch.Tensor) -> torch.Tensor:
            # A CUDA graph's outputs live in its static buffers, which the next replay overwrites:
            # copied out, as a caller that keeps them (the accuracy pass) must.
            return compiled(x).clone()

        return replayed

    return compile_


# What torch's own modes run (core.variant.Accepts): every precision, int8 (FX for eager and
# TorchScript, PT2E for inductor), both layouts.
ACCEPTS: dict[CompileMode, Accepts] = {
    CompileMode.EAGER: Accepts(),
    CompileMode.TORCHSCRIPT: Accepts(),
    CompileMode.INDUCTOR: Accepts(),
    # Seen twice on resnet50 and mobilenet_v3_large here: the process aborts in native code
    # while autotuning `qlinear_unary` (torch/_inductor/mkldnn_lowerings.py).
    CompileMode.INDUCTOR_MAX_AUTOTUNE: Accepts(
        int8=(Quantization.STATIC_INT8,),
        why={"int8": "max-autotune aborts autotuning PT2E dynamic int8 linears (torch 2.14.1): use inductor"},
    ),
    CompileMode.INDUCTOR_REDUCE_OVERHEAD: Accepts(),
}

COMPILERS: dict[CompileMode, Callable[[nn.Module, torch.Tensor], Runner]] = {
    CompileMode.EAGER: _eager,
    CompileMode.TORCHSCRIPT: _torchscript,
    CompileMode.INDUCTOR: _inductor(None),
    CompileMode.INDUCTOR_MAX_AUTOTUNE: _inductor("max-autotune"),
    CompileMode.INDUCTOR_REDUCE_OVERHEAD: _inductor("reduce-overhead"),
}
