"""Tiny models for tests, importable as `tiny_models:<factory>` (tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def small_cnn() -> nn.Module:
    return SmallCNN()


class Untraceable(SmallCNN):
    """Data-dependent control flow: FX symbolic tracing (static int8) cannot handle it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 1.0
        return super().forward(x)


def untraceable() -> nn.Module:
    return Untraceable()
