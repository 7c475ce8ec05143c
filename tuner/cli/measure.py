"""`python -m tuner measure MODEL --config VARIANT.yaml`: one variant built and measured in
this process, outside Ray, with the search's protocol (trial/evaluate.py).

`python -m tuner measure --model-uri models:/tuner-resnet50@candidate`: a registered model's
own artifact (deploy/), loaded through MLflow as a deployment loads it, measured with the
same protocol against the reference it was registered with; its p50 is printed beside the
confirmed p50 the search registered it on."""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import yaml

from tuner.cli.search import load_space
from tuner.core.errors import EXIT_NO_RESULT, EXIT_OK, ConfigError, TunerError
from tuner.core.schema import TrialStatus
from tuner.core.variant import Device, Variant
from tuner.measure.hardware import detect, usable_cores

PRINTED = ("device", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput_ips", "quality", "build_s",
           "stable")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    _use_device(args.device)
    if args.model_uri:
        return _run_registered(args)
    if not args.model:
        raise ConfigError("measure --config: name the MODEL too (e.g. `measure resnet50 --config recommended.yaml`)")
    variant, doc = _read_variant(args)
    space, _ = load_space(args)
    weights = args.weights or doc.get("weights", "auto")
    _check_threads(variant, f"--config {args.config}")

    from tuner.core.env import pin_threads
    from tuner.inputs.models import ModelSpec, check_inputs, resolve_weights
    from tuner.inputs.reference import reference_for
    from tuner.measure.ceiling import for_hardware as ceiling_for
    from tuner.trial.evaluate import TrialSettings, evaluate

    check_inputs(args.model, weights, args.data)
    pin_threads(variant.threads)  # inter-op threads can only be set before any parallel work
    spec = resolve_weights(ModelSpec(args.model, weights, args.seed or 0))
    ref = reference_for(spec, space.eval, args.data)
    result = evaluate(variant, ref, TrialSettings(space.timing, space.eval.screen_min_cosine, ceiling_for(detect())))
    return _print(args, variant, result, ref, {})


def _use_device(device: Device | str | None) -> None:
    """`--device cpu` hides the GPUs from torch the way CUDA itself offers (before torch first
    asks CUDA for them); `--device cuda` must find one. Unset: cuda where torch sees a GPU."""
    import os

    if device == Device.CPU:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    import torch

    if device == Device.CUDA and not torch.cuda.is_available():
        raise ConfigError(
            f"--device cuda: torch sees no CUDA device here (torch {torch.__version__}, built with CUDA"
            f" {torch.version.cuda or 'none'}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )


def _check_threads(variant: Variant, source: str) -> None:
    cores = usable_cores()  # taskset and cgroup limits count
    if variant.threads > cores:
        raise ConfigError(f"{source}: `variant.threads` is {variant.threads}; this machine has {cores} cores")


def _print(args: argparse.Namespace, variant: Variant, result: Any, ref: Any, extra: dict[str, Any]) -> int:
    import torch

    out = {**variant.to_dict(), **result.to_dict(), **extra}
    out.pop("traceback")
    out.update(weights=ref.weights_label, data=ref.data_label, torch_version=torch.__version__, device=detect().device)
    if args.json:
        print(json.dumps(out, default=float))
    else:
        print(f"{extra.get('model_uri', variant.label)}: status {result.status} {result.error}")
        for k in (*PRINTED, *extra):
            if out.get(k) is not None:
                print(f"  {k:16s} {out[k]}")
    return EXIT_OK if result.status is TrialStatus.OK else EXIT_NO_RESULT


def _run_registered(args: argparse.Namespace) -> int:
    """Measure a registered tuner model's artifact itself (see the module docstring)."""
    from tuner.core.env import quiet_logs, service_env

    service_env()
    quiet_logs()
    from tuner.core.env import pin_threads
    from tuner.deploy.registered import download, load, registered_variant
    from tuner.inputs.models import ModelSpec, resolve_weights
    from tuner.inputs.reference import reference_for
    from tuner.measure.ceiling import for_hardware as ceiling_for
    from tuner.tracking.store import absolute_uri, default_tracking_uri
    from tuner.trial.evaluate import TrialSettings, evaluate

    uri = args.model_uri
    with tempfile.TemporaryDirectory(prefix="tuner-model-") as tmp:  # the downloaded model, removed after
        local, config = download(uri, absolute_uri(args.tracking_uri or default_tracking_uri()), tmp)
        try:
            variant = Variant.from_dict(config["variant"])
        except TunerError as e:
            raise ConfigError(f"--model-uri {uri}: its variant is not one this tuner knows: {e}") from None
        if args.model and args.model != config["model"]:
            raise ConfigError(f"--model-uri {uri}: the model is `{config['model']}`, not `{args.model}`")
        _check_threads(variant, f"--model-uri {uri}")
        pin_threads(variant.threads)  # before the artifact loads: inter-op threads are set before any parallel work
        loaded = load(uri, local)
        args.model = config["model"]
        space, _ = load_space(args)
        spec = resolve_weights(ModelSpec(config["model"], args.weights or config["weights"], config.get("seed") or 0))
        ref = reference_for(spec, space.eval, args.data)
        settings = TrialSettings(space.timing, space.eval.screen_min_cosine, ceiling_for(detect()))
        result = evaluate(variant, ref, settings, builder=lambda _module: registered_variant(variant, loaded, local))
        extra: dict[str, Any] = {"model_uri": uri, "artifact": config["artifact"]}
        confirmed = config.get("confirmed_p50_ms")
        if confirmed and result.status is TrialStatus.OK:
            extra.update(registered_confirmed_p50_ms=confirmed,
                         p50_vs_confirmed=result.to_dict()["latency_p50_ms"] / confirmed)  # fmt: skip
        return _print(args, variant, result, ref, extra)


def _read_variant(args: argparse.Namespace) -> tuple[Variant, dict]:
    try:
        doc = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {args.config}: cannot read a YAML mapping: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {args.config}: expected a mapping with a `variant:` section")
    try:
        return Variant.from_dict(doc.get("variant", doc)), doc
    except TunerError as e:
        raise ConfigError(f"--config {args.config}: {e}") from None
