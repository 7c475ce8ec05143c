"""`python -m tuner measure MODEL --config VARIANT.yaml`: one variant built and measured in
this process, outside Ray, with the search's protocol (trial/evaluate.py)."""

from __future__ import annotations

import argparse
import json

import yaml

from tuner.cli.main import EXIT_NO_RESULT, EXIT_OK
from tuner.cli.search import load_space
from tuner.core.errors import ConfigError, TunerError
from tuner.core.variant import Variant
from tuner.measure.hardware import usable_cores

PRINTED = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "throughput_ips", "quality", "build_s", "stable")


def run(args: argparse.Namespace) -> int:
    variant, doc = _read_variant(args)
    space, _ = load_space(args)
    weights = args.weights or doc.get("weights", "auto")
    cores = usable_cores()  # taskset and cgroup limits count
    if variant.threads > cores:
        raise ConfigError(
            f"--config {args.config}: `variant.threads` is {variant.threads}; this machine has {cores} cores"
        )

    import torch

    from tuner.core.env import pin_threads
    from tuner.inputs.models import ModelSpec, check_inputs, resolve_weights
    from tuner.inputs.reference import reference_for
    from tuner.measure.ceiling import for_hardware as ceiling_for
    from tuner.measure.hardware import detect
    from tuner.trial.evaluate import TrialSettings, evaluate

    check_inputs(args.model, weights, args.data)
    pin_threads(variant.threads)  # inter-op threads can only be set before any parallel work
    spec = resolve_weights(ModelSpec(args.model, weights, args.seed or 0))
    ref = reference_for(spec, space.eval, args.data)
    result = evaluate(variant, ref, TrialSettings(space.timing, space.eval.screen_min_cosine, ceiling_for(detect())))
    out = {**variant.to_dict(), **result.to_dict()}
    out.pop("traceback")
    out.update(weights=ref.weights_label, data=ref.data_label, torch_version=torch.__version__)
    if args.json:
        print(json.dumps(out, default=float))
    else:
        print(f"{variant.label}: status {result.status} {result.error}")
        for k in PRINTED:
            if out.get(k) is not None:
                print(f"  {k:16s} {out[k]}")
    return EXIT_OK if result.status == "ok" else EXIT_NO_RESULT


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
