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


class Unexportable(SmallCNN):
    """An operator that neither ONNX exporter nor OpenVINO's converter knows (Bessel J0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(super().forward(x))


class RowBranch(SmallCNN):
    """A Python branch per row on the sign of its mean. torch.export refuses the data-dependent
    branch, so ONNX export falls back to the TorchScript exporter, which records the branches
    that its example took: rows on the other side come out negated. A real wrong export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.stack([o if x[i].mean() > 0 else -o for i, o in enumerate(out)])


def row_branch() -> nn.Module:
    return RowBranch()


class SharedResidual(nn.Module):
    """The graph shape that broke PT2E on resnet50 ("Input partition has more than one output
    node"): a conv+bn whose output feeds both a residual add and the next conv."""

    input_shape = (3, 32, 32)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.stem(x)
        out = torch.relu(self.conv2(self.conv1(identity)) + identity)
        out = torch.relu(self.conv2(out) + out)  # the add's output feeds a conv and an add
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


# ---- tiny image folders ---------------------------------------------------------------------

PALETTE = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


def write_images(folder, n: int, colour: tuple[int, int, int], seed: int, size: int = 40) -> None:
    """`n` PNGs of one colour with noise: classes with different colours are easily separable."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 40, (size, size, 3)), 0, 255)
        Image.fromarray(img.astype("uint8")).save(folder / f"img{i:03d}.png")


def write_labeled_folder(root, names: list[str], per_class: int, seed: int = 0) -> None:
    """An ImageFolder layout: one sub-folder per class, each its own colour."""
    for c, name in enumerate(names):
        write_images(f"{root}/{name}", per_class, PALETTE[c % len(PALETTE)], seed + c)


def train_small_cnn(root) -> None:
    """Write train/ and val/ folders of three separable colour classes under `root`, train a
    SmallCNN on train/ for a few seconds and save its state dict to `root/small_cnn.pt`."""
    from pathlib import Path

    from tuner.inputs.data import load_eval_data

    root = Path(root)
    write_labeled_folder(root / "train", ["0", "1", "2"], per_class=12, seed=100)
    write_labeled_folder(root / "val", ["0", "1", "2"], per_class=8, seed=200)
    train = load_eval_data(root / "train", (3, 32, 32), n_eval=36, n_calib=0, seed=0)
    assert train.labels is not None
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.inputs), train.labels).backward()
        opt.step()
    torch.save(model.state_dict(), root / "small_cnn.pt")
