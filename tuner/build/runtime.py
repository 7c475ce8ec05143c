"""What every builder shares: the runner type, the batches a static-shape model is fed, and
what a runtime's builder hands back to `build()` (the runner and what only the runtime
knows about itself: its artifact's size, the threads it reports, its exporter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tuner.build.compile import Runner

# A runtime that runs several calls at once (OpenVINO's THROUGHPUT variant: an async queue of
# infer requests) is fed batches from the iterator back to back for the seconds given,
# without waiting for one call to end before the next goes in, so its queue never drains
# between calls, as OpenVINO's own throughput recipe and a batching server feed it; returns
# items per second. A runtime that runs one call at a time has none: its stream is its
# closed loop (trial/evaluate.py).
Stream = Callable[[Iterator[torch.Tensor], float], float]


def full_batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split into full batches. The last one is padded by wrapping around to the first rows,
    so that a static-shape (compiled, exported) model never sees a new shape; callers that
    need one output per row trim the outputs."""
    n = len(x)
    idx = list(range(n)) + [i % n for i in range((-n) % batch_size)]
    return list(x[idx].split(batch_size))


def example_batch(calibration: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first calibration input repeated to one batch: what a model is compiled, traced or
    exported with (contiguous, fp32, on the calibration's device)."""
    return calibration[:1].expand(batch_size, *calibration.shape[1:]).contiguous()


@dataclass
class Runtime:
    run: Runner  # an fp32 NCHW batch on the CPU -> the logits, as a torch tensor
    size_mb: float | None = None  # the artifact's size (weights as the runtime holds them)
    figures: dict[str, float] = field(default_factory=dict)  # each declared in core/schema.py
    stream: Stream | None = None
