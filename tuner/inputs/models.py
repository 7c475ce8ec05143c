"""Models and their weights.

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

The eval and calibration data are inputs/data.py's.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import io
import logging
import pickle
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.config.request import WEIGHTS_KEYWORDS
from tuner.core.errors import ConfigError

log = logging.getLogger(__name__)


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
    if weights not in (*WEIGHTS_KEYWORDS, "factory") and not Path(weights).is_file():
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
        # torch.hub writes `Downloading: "<url>"` to stdout before it tries: offline, that line
        # came before the random-init banner and read like a download that had happened.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
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
    if w not in WEIGHTS_KEYWORDS:
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


def image_preprocessing(name: str, weights: str, size: int) -> tuple[Callable[[Any], Any], str, list[str] | None]:
    """What a served image goes through, as the search's image data did (inputs/data.py):
    the weights' own transforms at `size` (the ImageNet convention for other models), a
    description of it, and the class names where the weights have them (none for random
    init: a random head's classes mean nothing). Loads no weights."""
    from tuner.inputs.data import image_transform

    tv = _torchvision_weights(name) if ":" not in name else None
    transform, how = image_transform(size, tv.transforms if tv is not None else None)
    categories = list(tv.meta.get("categories") or []) or None if tv is not None and weights != "random" else None
    return transform, how, categories
