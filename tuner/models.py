"""Models, weights and the eval/calibration data.

Model names: any torchvision classification model (`resnet50`, `mobilenet_v3_large`, ...)
or a user's own `module.path:factory` (a callable returning an `nn.Module`; it may carry
an `input_shape` attribute (C, H, W), else (3, size, size) is assumed).

Weights (`--weights`):
    auto        (default) torchvision's pretrained weights if cached or downloadable,
                else random init with a loud warning; the choice is recorded. For a
                `module:factory` model: whatever the factory builds (it may load its own
                weights), labelled as such, never called random.
    pretrained  torchvision's weights; an error, with what to do, if they cannot be had.
    random      random init from the search seed (identical in every trial process).
    PATH        a state dict, loaded with `torch.load(..., weights_only=True)`.

Data (`--data DIR`), see `load_eval_data`: synthetic by default, or an image folder.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import random
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass(frozen=True)
class ModelSpec:
    """What to load. Resolved once in the driver (`resolve_weights`) so that every trial
    process loads exactly the same thing."""

    name: str
    weights: str = "auto"
    seed: int = 0


@dataclass
class LoadedModel:
    module: nn.Module
    weights_label: str  # honest label: "pretrained (IMAGENET1K_V2)", "random-init (seed 0)", "file:/x.pt"
    categories: list[str] | None
    mean_std: tuple[list[float], list[float]] | None


def _torchvision_weights(name: str) -> Any | None:
    from torchvision import models as tvm

    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None


def is_torchvision_model(name: str) -> bool:
    from torchvision import models as tvm

    return name in tvm.list_models(module=tvm)


def _build_architecture(name: str, seed: int) -> nn.Module:
    """The bare architecture, initialised from `seed` (deterministic on the CPU)."""
    torch.manual_seed(seed)
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model `{name}`: cannot import `{attr}` from module `{mod_name}`: {e}") from None
        module = factory()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model `{name}`: the factory returned {type(module).__name__}, not an nn.Module")
        return module
    if not is_torchvision_model(name):
        from torchvision import models as tvm

        known = ", ".join(tvm.list_models(module=tvm)[:12])
        raise ConfigError(
            f"unknown model `{name}`: use a torchvision classification model name ({known}, ...) "
            "or `module.path:factory`"
        )
    from torchvision import models as tvm

    return tvm.get_model(name, weights=None)


def _pretrained_available(weights: Any) -> bool:
    """True if the checkpoint is in torch's hub cache or downloads within a short timeout."""
    filename = Path(weights.url).name
    if (Path(torch.hub.get_dir()) / "checkpoints" / filename).exists():
        return True
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        weights.get_state_dict(progress=False)
        return True
    except Exception as e:  # network errors come in many types (URLError, OSError, ...)
        log.debug("pretrained download failed: %s", e)
        return False
    finally:
        socket.setdefaulttimeout(old)


def resolve_weights(spec: ModelSpec) -> ModelSpec:
    """Turn `auto` into `pretrained` or `random` (with a loud warning); check the rest.

    Called once by the driver, so trials never try (and time out on) a download.
    """
    w = spec.weights
    if w == "factory" and ":" in spec.name:
        return spec  # already resolved (e.g. read back from recommended.yaml)
    if w not in ("auto", "pretrained", "random"):
        if not Path(w).is_file():
            raise ConfigError(f"--weights {w}: no such file (allowed: pretrained, random, or a state-dict path)")
        return spec
    if w == "random":
        return spec
    if ":" in spec.name and w == "auto":
        return ModelSpec(spec.name, "factory", spec.seed)  # whatever the user's factory builds
    tv = _torchvision_weights(spec.name) if ":" not in spec.name else None
    if tv is not None and _pretrained_available(tv):
        return ModelSpec(spec.name, "pretrained", spec.seed)
    if w == "pretrained":
        where = Path(torch.hub.get_dir()) / "checkpoints"
        raise ConfigError(
            f"--weights pretrained: no pretrained weights for `{spec.name}` in the cache ({where}) and "
            "the download failed. Copy the checkpoint file there, pass --weights PATH, or use --weights random."
        )
    # A banner on stderr, not a warnings.warn that filters could hide.
    print(
        "!" * 78 + f"\n!! PRETRAINED WEIGHTS FOR `{spec.name}` ARE NOT AVAILABLE (offline, not cached).\n"
        "!! Using RANDOM-INIT weights: latency is real, accuracy figures are fidelity to\n"
        "!! the random fp32 model only. Tagged `tuner.weights=random-init (seed N)`.\n"
        "!! Pass --weights pretrained to make this an error, or --weights PATH.\n" + "!" * 78,
        file=sys.stderr,
        flush=True,
    )
    return ModelSpec(spec.name, "random", spec.seed)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load a resolved spec (`resolve_weights` first) in eval mode on the CPU."""
    tv = _torchvision_weights(spec.name) if ":" not in spec.name else None
    categories = list(tv.meta.get("categories") or []) or None if tv is not None else None
    mean_std = None
    if tv is not None:
        t = tv.transforms()
        mean_std = (list(t.mean), list(t.std))
    if spec.weights == "pretrained":
        if tv is None:
            raise ConfigError(f"--weights pretrained: torchvision has no pretrained weights for `{spec.name}`")
        from torchvision import models as tvm

        module = tvm.get_model(spec.name, weights=tv)
        label = f"pretrained ({tv})"
    else:
        module = _build_architecture(spec.name, spec.seed)
        if spec.weights == "factory":
            label = f"as built by {spec.name} (torch seed {spec.seed})"
        elif spec.weights == "random":
            label = f"random-init (seed {spec.seed})"
            categories = None  # a random head has no meaningful class names
        else:
            _load_state_dict_file(module, Path(spec.weights))
            label = f"file:{Path(spec.weights).resolve()}"
    return LoadedModel(module.eval(), label, categories, mean_std)


def _load_state_dict_file(module: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"--weights {path}: not a loadable state dict (weights_only=True): {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"--weights {path}: expected a state dict, got {type(state).__name__}")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:8]}")
        raise ConfigError(f"--weights {path}: does not fit the model: " + "; ".join(parts))
    module.load_state_dict(state)


def weights_digest(module: nn.Module) -> str:
    """Hash of every weight's bytes: proves each trial loaded the same model as the reference."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        if torch.is_tensor(v):
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def input_shape(module: nn.Module, size: int) -> tuple[int, int, int]:
    shape = getattr(module, "input_shape", None)
    return (int(shape[0]), int(shape[1]), int(shape[2])) if shape is not None else (3, size, size)


# ---- data ---------------------------------------------------------------------------------


@dataclass
class EvalData:
    inputs: torch.Tensor  # [N, C, H, W] fp32, preprocessed
    labels: torch.Tensor | None  # [N] int64, or None when unlabeled
    calibration: torch.Tensor  # [M, C, H, W], disjoint from `inputs`
    label: str  # honest description, e.g. "synthetic (seed 0, 32 eval + 16 calib, 224x224)"


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


def _image_transform(size: int, mean_std: tuple[list[float], list[float]] | None) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms as T

    mean, std = mean_std or ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def _class_index(folders: list[str], categories: list[str] | None, num_outputs: int, root: Path) -> dict[str, int]:
    """Folder name -> model output index. Rule (documented in README):
    1. all folder names are integers -> that index;
    2. all folder names are among the weights' categories -> the category's index;
    3. otherwise the sorted folder order (0, 1, ...), if the model has enough outputs."""
    if all(f.isdigit() for f in folders):
        idx = {f: int(f) for f in folders}
    elif categories and all(f in categories for f in folders):
        idx = {f: categories.index(f) for f in folders}
    else:
        idx = {f: i for i, f in enumerate(sorted(folders))}
    bad = [f for f, i in idx.items() if i >= num_outputs]
    if bad:
        raise ConfigError(
            f"--data {root}: class folder(s) {bad[:5]} map to output indices >= the model's "
            f"{num_outputs} outputs. Name folders by output index or by the weights' category names."
        )
    return idx


def load_eval_data(
    data_dir: str | Path | None,
    shape: tuple[int, int, int],
    n_eval: int,
    n_calib: int,
    seed: int,
    *,
    categories: list[str] | None = None,
    mean_std: tuple[list[float], list[float]] | None = None,
    num_outputs: int = 1000,
) -> EvalData:
    """Synthetic data, or an image folder: labeled (class sub-folders, ImageFolder layout)
    or unlabeled (flat). Calibration images are disjoint from eval images. Unreadable
    images are skipped with a warning; no usable image at all is an error."""
    if data_dir is None:
        return synthetic_data(shape, n_eval, n_calib, seed)
    from PIL import Image

    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError(f"--data {root}: no such folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        idx = _class_index([p.name for p in subdirs], categories, num_outputs, root)
        files = [(f, idx[d.name]) for d in subdirs for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        kind = f"labeled folder {root} ({len(subdirs)} classes)"
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        kind = f"unlabeled folder {root}"
    if not files:
        raise ConfigError(f"--data {root}: no images found (looked for {sorted(IMAGE_SUFFIXES)})")
    random.Random(seed).shuffle(files)
    transform = _image_transform(shape[1], mean_std)
    tensors: list[torch.Tensor] = []
    labels: list[int] = []
    skipped = 0
    for f, y in files:
        if len(tensors) >= n_eval + n_calib:
            break
        try:
            with Image.open(f) as im:
                tensors.append(transform(im.convert("RGB")))
            labels.append(y)
        except Exception as e:  # PIL raises many types for corrupt files
            skipped += 1
            log.warning("skipping unreadable image %s: %s", f, e)
    if skipped:
        warnings.warn(f"--data {root}: skipped {skipped} unreadable image(s)", stacklevel=2)
    if len(tensors) < 2:
        raise ConfigError(f"--data {root}: fewer than 2 readable images ({skipped} unreadable)")
    # Calibration takes its share first (at most half), the rest is the eval set.
    n_cal = min(n_calib, len(tensors) // 2)
    x = torch.stack(tensors)
    y_all = torch.tensor(labels)
    cal, ev, ev_y = x[:n_cal], x[n_cal : n_cal + n_eval], y_all[n_cal : n_cal + n_eval]
    return EvalData(
        ev.contiguous(),
        ev_y if subdirs else None,
        cal.contiguous(),
        f"{kind}: {len(ev)} eval + {len(cal)} calibration images, {skipped} skipped",
    )
