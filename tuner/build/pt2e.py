"""int8 for inductor: PT2E with torchao's `X86InductorQuantizer` (the FX path stays for eager
and TorchScript, build/quantize.py).

The chain: `torch.export.export(strict=True)` -> `prepare_pt2e` with the x86-inductor
quantizer -> calibration -> `convert_pt2e`; the compile step then runs `torch.compile`
with freezing, where inductor fuses the quantize/dequantize pairs into oneDNN int8 kernels.

Strict export, not the default non-strict one: on resnet50 here the non-strict graph makes
the quantizer fail with "Input partition has more than one output node" (a residual `add`
whose input is shared; torchao PR #4480 fixes one cause). tests/test_runtimes.py keeps a
model of that shape. Dynamic int8 uses the quantizer's dynamic config (linear layers only).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from tuner.build.runtime import full_batches
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.variant import Quantization


def quantize_pt2e(
    model: nn.Module, calibration: torch.Tensor, batch_size: int, quantization: Quantization
) -> nn.Module:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batches = full_batches(calibration, batch_size)
    try:
        exported = torch.export.export(model, (batches[0],), strict=True).module()
    except Exception as e:  # dynamo's Unsupported, UserError, ...: the model cannot be captured
        raise VariantUnsupported(f"torch.export (strict) failed: {one_line(e)}") from e
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(
        is_dynamic=quantization is Quantization.DYNAMIC_INT8))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prepared = prepare_pt2e(exported, quantizer)
        except Exception as e:  # the quantizer's annotation fails on graph shapes it does not know
            raise VariantUnsupported(f"PT2E prepare (X86InductorQuantizer) failed: {one_line(e)}") from e
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        return convert_pt2e(prepared)
