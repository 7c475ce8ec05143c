"""A build in the driver's own process (the pick's save, its profile) leaves torch's
process-wide settings as it found them (build.torch_settings_kept): the quantized engine FX
int8 sets, the random state a random-init load seeds, the thread count."""

from __future__ import annotations

import torch

from tuner.build import build, torch_settings_kept
from tuner.core.variant import Variant


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
