"""The hardware's ceiling: dense matrix-multiply throughput per precision, measured once per
machine with torch's own kernels and cached by hardware fingerprint.

A trial's `ceiling_fraction` = achieved GFLOP/s (model FLOPs per item x items/s) divided by
the ceiling of its precision. It tells how far the best config is from what the box can do
at most; convolutions and memory-bound layers rarely reach 1.0, so read it as headroom.

* fp32 / bf16 / fp16: `torch.mm` on square matrices (fp16 only where it is native);
* int8: `quantized::linear` with fbgemm/x86-prepacked weights, the kernel family that
  torch.ao int8 models run on. On CUDA: `torch.mm` in fp32/bf16/fp16 only.

The best of several timed windows is kept: a ceiling is a maximum, not a typical value.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from tuner.inputs.hardware import Hardware
from tuner.measure.interference import sample_load

SIZE = 1024
BUSY_CORES = 0.25  # other processes' CPU use above which a measured ceiling is not cached
WINDOWS = 5
WINDOW_S = 0.3


def cache_path(fingerprint: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "tuner" / f"ceiling-{fingerprint}.json"


def _best_rate(fn: Callable[[], object], flops: float, sync: Callable[[], None] | None) -> float:
    for _ in range(3):
        fn()
    best = 0.0
    for _ in range(WINDOWS):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < WINDOW_S:
            fn()
            n += 1
        if sync is not None:
            sync()
        best = max(best, flops * n / (time.perf_counter() - start))
    return best / 1e9


def _matmul(x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.mm(x, y)


def _int8_linear(a: torch.Tensor, b: torch.Tensor) -> Callable[[], object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated in 2.14
        torch.backends.quantized.engine = "x86"
        packed = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(b, 0.05, 0, torch.qint8), None)
        xq = torch.quantize_per_tensor(a, 0.05, 128, torch.quint8)
    return lambda: torch.ops.quantized.linear(xq, packed, 1.0, 0)


def precisions_for(device: str, bf16_native: bool, fp16_native: bool) -> list[str]:
    """The precisions whose ceiling is worth measuring on this hardware."""
    out = ["fp32"] + (["bf16"] if bf16_native else []) + (["fp16"] if fp16_native else [])
    return out + (["int8"] if device == "cpu" else [])


def measure_ceiling(device: str, precisions: list[str], threads: int) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) per precision, at `threads` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        sync = torch.cuda.synchronize if dev.type == "cuda" else None
        a, b = torch.randn(SIZE, SIZE, device=dev), torch.randn(SIZE, SIZE, device=dev)
        flops = 2.0 * SIZE**3
        out: dict[str, float] = {}
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        with torch.inference_mode():
            for p in precisions:
                if p in dtypes:
                    out[p] = _best_rate(_matmul(a.to(dtypes[p]), b.to(dtypes[p])), flops, sync)
                elif p == "int8" and dev.type == "cpu":
                    out[p] = _best_rate(_int8_linear(a, b), flops, None)
        return out
    finally:
        torch.set_num_threads(old)


def for_hardware(hw: Hardware) -> dict[str, float]:
    """This machine's ceiling for every precision it runs natively (cached)."""
    return load_or_measure(
        hw.fingerprint, hw.device, precisions_for(hw.device, hw.bf16_native, hw.fp16_native), hw.cores
    )


def load_or_measure(fingerprint: str, device: str, precisions: list[str], threads: int) -> dict[str, float]:
    """The cached ceiling for this hardware fingerprint, measured first if missing."""
    path = cache_path(fingerprint)
    try:
        cached = json.loads(path.read_text())
        if all(p in cached for p in precisions):
            return {p: float(cached[p]) for p in precisions}
    except (OSError, ValueError):
        pass
    before = sample_load()
    ceiling = measure_ceiling(device, precisions, threads)
    busy = max(before.busy_cores, sample_load().busy_cores)
    if busy > BUSY_CORES:
        # A ceiling measured on a busy box is too low; use it for this run, never cache it.
        print(f"warning: the machine was busy ({busy:.2f} cores) while measuring its ceiling; not cached", flush=True)
        return ceiling
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(ceiling, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-measure next time
    return ceiling


def ceiling_key(precision: str, quantization: str) -> str:
    """Which ceiling a variant is compared against."""
    return "int8" if quantization != "none" else precision


def ceiling_fraction(flops_per_item: float, throughput_ips: float, ceiling_gflops: float) -> float:
    return flops_per_item * throughput_ips / 1e9 / ceiling_gflops if ceiling_gflops > 0 else float("nan")
