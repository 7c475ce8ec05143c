"""What a runtime's builder hands back to `build()`: the runner and what only the runtime
knows about itself (its artifact's size, the threads it reports, its exporter)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Runtime:
    run: Runner  # an fp32 NCHW batch on the CPU -> the logits, as a torch tensor
    size_mb: float | None = None  # the artifact's size (weights as the runtime holds them)
    figures: dict[str, float] = field(default_factory=dict)  # each declared in core/schema.py
