"""Memory figures: the trial process's peak RSS and the serialized model size.

Each trial runs in a fresh process (docs/architecture.md §3), so the process-lifetime peak RSS is the
peak of this variant alone: loading, building, calibrating and measuring it.
"""

from __future__ import annotations

import io
import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def peak_device_mb() -> float | None:
    """Peak allocated CUDA memory, or None on the CPU."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / (1024 * 1024)


def model_size_mb(module: torch.nn.Module | torch.jit.ScriptModule) -> float:
    """Size of the serialized weights (state dict; a ScriptModule is saved whole)."""
    buf = io.BytesIO()
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, buf)
    else:
        torch.save(module.state_dict(), buf)
    return buf.tell() / (1024 * 1024)
