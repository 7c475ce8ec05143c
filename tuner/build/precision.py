"""Precision step: fp32 as is; bf16 / fp16 by casting weights (and inputs) to the dtype;
on a GPU, TF32 on for tf32 and off for fp32 (torch's default leaves it on for cuDNN
convolutions, so an "fp32" resnet would not be fp32). Each trial is a process of its own,
so the switch does not outlive it.

Casting, not autocast: autocast under `torch.compile` was measured at 770 ms against 40 ms
for the frozen fp32 graph on resnet50 (2-core EPYC), while a cast model lowers cleanly
through every compile mode. int8 variants stay fp32 here and are quantized next.
"""

from __future__ import annotations

import torch
from torch import nn

from tuner.core.variant import Precision

DTYPES: dict[Precision, torch.dtype] = {
    Precision.FP32: torch.float32,
    Precision.TF32: torch.float32,
    Precision.BF16: torch.bfloat16,
    Precision.FP16: torch.float16,
}


def apply_precision(model: nn.Module, precision: Precision) -> nn.Module:
    if torch.cuda.is_available():
        # The `allow_tf32` switches, not torch's newer `fp32_precision` ones: inductor still reads
        # `cudnn.allow_tf32`, and in torch 2.14 reading it after the new setters raises.
        tf32 = precision is Precision.TF32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return model if DTYPES[precision] is torch.float32 else model.to(DTYPES[precision])
