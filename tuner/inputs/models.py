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

import difflib
import hashlib
import importlib
import logging
import pickle
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.core.errors import ConfigError, one_line

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
    transforms: Callable[..., Any] | None  # the weights' own preprocessing (torchvision `weights.transforms`)


def _torchvision_weights(name: str) -> Any | None:
    from torchvision import models as tvm

    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None


def is_torchvision_model(name: str) -> bool:
    from torchvision import models as tvm

    return name in tvm.list_models(module=tvm)


def _factory(name: str) -> Callable[[], Any]:
    mod_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"model `{name}`: cannot import `{attr}` from module `{mod_name}` ({e}). A user model is "
            "`module.path:factory`, importable from the current directory or PYTHONPATH."
        ) from None
    if not callable(factory):
        raise ConfigError(f"model `{name}`: `{attr}` is not callable; name a function that returns an nn.Module")
    return factory


def _unknown_model(name: str) -> ConfigError:
    from torchvision import models as tvm

    names = tvm.list_models(module=tvm)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}? " if close else ""
    return ConfigError(
        f"unknown model `{name}`: {hint}Use a torchvision classification model name ({', '.join(names[:8])}, ...; "
        "all of them: python -c 'import torchvision; print(torchvision.models.list_models(module="
        "torchvision.models))') or your own `module.path:factory`"
    )


def check_inputs(name: str, weights: str, data: str | Path | None) -> None:
    """The cheap checks on the model, weights and data flags, before anything runs or is logged."""
    if ":" in name:
        _factory(name)
        if weights == "pretrained":
            raise ConfigError(
                f"--weights pretrained conflicts with the model `{name}`: torchvision has pretrained weights "
                "for its own models only. Use --weights auto (whatever the factory builds), random, or PATH."
            )
    elif not is_torchvision_model(name):
        raise _unknown_model(name)
    if weights not in ("auto", "pretrained", "random", "factory") and not Path(weights).is_file():
        raise ConfigError(
            f"--weights {weights}: no such file (allowed: auto, pretrained, random, or a state-dict PATH)"
        )
    if data is not None and not Path(data).is_dir():
        raise ConfigError(
            f"--data {data}: no such folder (give an image folder: class sub-folders for labeled data, "
            "or a flat folder of images)"
        )


def _build_architecture(name: str, seed: int) -> nn.Module:
    """The bare architecture, initialised from `seed` (deterministic on the CPU)."""
    torch.manual_seed(seed)
    if ":" in name:
        module = _factory(name)()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model `{name}`: the factory returned {type(module).__name__}, not an nn.Module")
        return module
    if not is_torchvision_model(name):
        raise _unknown_model(name)
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
    except (OSError, RuntimeError, ValueError) as e:  # URLError/timeouts are OSErrors; a bad hash is a RuntimeError
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
        check_inputs(spec.name, w, None)
        # Absolute: trial processes (Ray workers) do not share the driver's working directory.
        return ModelSpec(spec.name, str(Path(w).resolve()), spec.seed)
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
    transforms = tv.transforms if tv is not None else None
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
    return LoadedModel(module.eval(), label, categories, transforms)


def _load_state_dict_file(module: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:  # refused code, bad zip, ...
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
    """(C, H, W) for one input: the module's `input_shape` attribute (user factories), else a
    fixed `image_size` (torchvision's ViTs accept nothing else), else (3, size, size)."""
    shape = getattr(module, "input_shape", None)
    if shape is not None:
        return (int(shape[0]), int(shape[1]), int(shape[2]))
    fixed = getattr(module, "image_size", None)
    if isinstance(fixed, int) and fixed != size:
        log.warning("this model only accepts %dx%d inputs; eval.input_size %d is ignored", fixed, fixed, size)
        return (3, fixed, fixed)
    return (3, size, size)


# ---- data ---------------------------------------------------------------------------------


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
    """Folder name -> model output index, and which rule mapped them. The rule (README "Data"), first match wins:
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
    from PIL import Image

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
            with Image.open(f) as im:
                tensors.append(transform(im.convert("RGB")))
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
