"""The eval and calibration data of a search (`--data DIR`, see `load_eval_data`): a
fixed-seed synthetic set by default, or an image folder, labeled (class sub-folders) or
not, preprocessed with the weights' own transforms. Always labelled honestly."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.core.errors import ConfigError, one_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class EvalData:
    inputs: torch.Tensor  # [N, C, H, W] fp32, preprocessed
    labels: torch.Tensor | None  # [N] int64, or None when unlabeled
    calibration: torch.Tensor  # [M, C, H, W], disjoint from `inputs`
    label: str  # honest description, e.g. "synthetic (seed 0, 32 eval + 16 calib, 224x224)"
    eval_files: list[str] | None = None  # the images behind `inputs`, in order (folder data only)


def synthetic_data(shape: tuple[int, int, int], n_eval: int, n_calib: int, seed: int) -> EvalData:
    """A fixed-seed synthetic set: smooth random images (low-res noise upsampled), normalised
    like ImageNet inputs. Not real images: quality is fidelity to fp32, nothing more."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.rand(n_eval + n_calib, c, max(1, h // 8), max(1, w // 8), generator=g)
    imgs = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    imgs = (imgs - 0.45) / 0.225
    return EvalData(
        imgs[:n_eval].contiguous(),
        None,
        imgs[n_eval:].contiguous(),
        f"synthetic (seed {seed}, {n_eval} eval + {n_calib} calibration inputs, {h}x{w})",
    )


def image_transform(size: int, weights_transforms: Callable[..., Any] | None) -> tuple[Callable[[Any], Any], str]:
    """PIL image -> normalised [C, size, size] tensor, and a description of it.

    The weights' own preprocessing (resize, crop, interpolation, mean/std) where torchvision
    has it, with the crop set to `size` and the resize scaled in proportion (256/224 for most
    ImageNet weights). Otherwise the ImageNet convention: resize 256/224 x size, centre crop,
    ImageNet mean/std."""
    if weights_transforms is not None:
        preset = weights_transforms()
        ratio = preset.resize_size[0] / preset.crop_size[0]
        t = weights_transforms(crop_size=size, resize_size=round(size * ratio))
        how = f"the weights' transforms (resize {t.resize_size[0]}, crop {size}, {t.interpolation.value})"
        return t, how
    from torchvision import transforms as T

    resize = round(size * 256 / 224)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
    return t, f"ImageNet convention (resize {resize}, crop {size}, ImageNet mean/std)"


IMAGENET_SYNSETS = (
    Path(__file__).resolve().parents[1] / "data" / "imagenet_synsets.txt"
)  # the 1000 ImageNet-1k WordNet ids


def class_index(
    folders: list[str], categories: list[str] | None, num_outputs: int, root: Path
) -> tuple[dict[str, int], str]:
    """Folder name -> model output index, and which rule mapped them. The rule (docs/models-data.md), first match wins:
    1. every folder name is an integer: that output index;
    2. every folder name is one of the weights' category names ("tench", "goldfish", ...): its index;
    3. every folder name is an ImageNet-1k synset ("n01440764", ...) and the model has 1000
       outputs: the synset's index in ImageNet order (sorted ids, as torchvision's weights use);
    4. as many folders as the model has outputs (a model trained with ImageFolder on these
       classes): sorted folder order, 0, 1, ...
    Anything else is an error: a silent guess would report a meaningless top-1."""
    synsets = IMAGENET_SYNSETS.read_text().split()
    if all(f.isdigit() for f in folders):
        idx, rule = {f: int(f) for f in folders}, "integer folder names"
    elif categories and all(f in categories for f in folders):
        idx, rule = {f: categories.index(f) for f in folders}, "the weights' category names"
    elif num_outputs == len(synsets) and all(f in synsets for f in folders):
        idx, rule = {f: synsets.index(f) for f in folders}, "ImageNet-1k synsets"
    elif len(folders) == num_outputs:
        idx, rule = {f: i for i, f in enumerate(sorted(folders))}, "sorted folder order"
    else:
        raise ConfigError(
            f"--data {root}: cannot map the class folders {sorted(folders)[:5]}{' ...' if len(folders) > 5 else ''} "
            f"to the model's {num_outputs} outputs. Name each folder by its output index (0, 1, ...), by the "
            "weights' category name, by ImageNet synset (n01440764, ...), or give exactly one folder per "
            "output (sorted order); or pass a flat folder of images to measure fidelity to fp32 only."
        )
    bad = [f for f, i in idx.items() if i >= num_outputs]
    if bad:
        raise ConfigError(
            f"--data {root}: class folder(s) {bad[:5]} map ({rule}) to output indices >= the model's "
            f"{num_outputs} outputs."
        )
    return idx, rule


def load_eval_data(
    data_dir: str | Path | None,
    shape: tuple[int, int, int],
    n_eval: int,
    n_calib: int,
    seed: int,
    *,
    categories: list[str] | None = None,
    weights_transforms: Callable[..., Any] | None = None,
    num_outputs: int = 1000,
) -> EvalData:
    """Synthetic data, or an image folder: labeled (class sub-folders, ImageFolder layout)
    or unlabeled (flat). Calibration images are disjoint from eval images. Unreadable
    images are skipped with a warning; no usable image at all is an error."""
    if data_dir is None:
        return synthetic_data(shape, n_eval, n_calib, seed)
    from PIL import Image, ImageOps

    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: no such folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        idx, rule = class_index([p.name for p in subdirs], categories, num_outputs, root)
        files = [(f, idx[d.name]) for d in subdirs for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        kind = f"labeled folder {root} ({len(subdirs)} classes, mapped by {rule})"
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        kind = f"unlabeled folder {root}"
    if not files:
        raise ConfigError(f"--data {root}: no images found (looked for {sorted(IMAGE_SUFFIXES)})")
    random.Random(seed).shuffle(files)
    transform, how = image_transform(shape[1], weights_transforms)
    tensors: list[torch.Tensor] = []
    labels: list[int] = []
    used: list[str] = []
    skipped: list[str] = []
    for f, y in files:
        if len(tensors) >= n_eval + n_calib:
            break
        try:
            with Image.open(f) as im:  # upright by its EXIF orientation, as the service sees it
                tensors.append(transform(ImageOps.exif_transpose(im).convert("RGB")))
            labels.append(y)
            used.append(str(f))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's errors for bad files
            skipped.append(f"{f.name} ({one_line(e)[:80]})")
    if skipped:  # on stderr, not warnings.warn, which filters can hide
        shown = "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        print(f"warning: --data {root}: skipped {len(skipped)} unreadable image(s): {shown}", file=sys.stderr)
    if len(tensors) < 2:
        raise ConfigError(f"--data {root}: fewer than 2 readable images ({len(skipped)} unreadable)")
    # Calibration takes its share first (at most half), the rest is the eval set.
    n_cal = min(n_calib, len(tensors) // 2)
    x = torch.stack(tensors)
    y_all = torch.tensor(labels)
    cal, ev, ev_y = x[:n_cal], x[n_cal : n_cal + n_eval], y_all[n_cal : n_cal + n_eval]
    return EvalData(
        ev.contiguous(),
        ev_y if subdirs else None,
        cal.contiguous(),
        f"{kind}: {len(ev)} eval + {len(cal)} calibration images, {len(skipped)} unreadable skipped; "
        f"preprocessing: {how}",
        used[n_cal : n_cal + n_eval],
    )
