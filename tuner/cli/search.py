"""`python -m tuner search MODEL [flags]` and `search MODEL --resume OUTPUT_DIR`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tuner.config.request import SearchRequest, load_request, normalise_weights
from tuner.config.space import SearchSpace, resolve_space_file
from tuner.core.console import safe_name
from tuner.core.env import measurement_env, quiet_logs, service_env
from tuner.core.errors import EXIT_NO_RESULT, EXIT_OK, ConfigError
from tuner.core.variant import Device
from tuner.tracking.store import absolute_uri, default_tracking_uri


def load_space(args: argparse.Namespace, **search: object) -> tuple[SearchSpace, Path]:
    """The space file for `args.model` (or `--space`), with the flags that override it."""
    path = resolve_space_file(args.model, args.space)
    space = SearchSpace.load(path).with_overrides(eval={"samples": args.eval_samples}, search=search)
    return space, path


def run(args: argparse.Namespace) -> int:
    service_env()  # before Ray and MLflow are imported: both read these when imported
    measurement_env()
    quiet_logs()
    from tuner.search.run import run_search

    req = _resumed(args) if args.resume is not None else _new(args)
    outcome = run_search(req)
    return EXIT_OK if outcome.recommended is not None and outcome.serving_met else EXIT_NO_RESULT


def _new(args: argparse.Namespace) -> SearchRequest:
    space, path = load_space(args, trials=args.trials, time_budget_minutes=args.time_budget, objective=args.objective)
    space = space.with_overrides(
        constraints={"max_accuracy_drop": args.max_accuracy_drop, "max_latency_ms": args.max_latency_ms},
        serving={"scenario": args.scenario, "latency_bound_ms": args.latency_bound_ms, "image_size": args.image_size},
    )
    output = args.output or Path("tuner-results") / f"{safe_name(args.model)}-{time.strftime('%Y%m%d-%H%M%S')}"
    output = output.resolve()
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--output {output}: cannot write there ({e.strerror})") from None
    return SearchRequest(
        model=args.model,
        space=space,
        space_file=path.resolve(),
        weights=normalise_weights(args.weights or "auto"),
        data=str(Path(args.data).resolve()) if args.data else None,
        tracking_uri=absolute_uri(args.tracking_uri or default_tracking_uri()),
        experiment=args.experiment or f"tuner/{args.model}",
        output=output,
        seed=args.seed or 0,
        address=args.address,
        hardware=args.hardware,
        device=Device(args.device) if args.device else None,  # argparse checked the choice
    )


def _resumed(args: argparse.Namespace) -> SearchRequest:
    """The saved request of the search in `--resume DIR`. Flags may repeat the command that
    started it (the first thing a user types); a flag whose value differs from the saved
    one is an error that names each such flag with both values."""
    req = load_request(args.resume)
    if req.model != args.model:
        raise ConfigError(f"--resume {args.resume}: that search is of `{req.model}`, not `{args.model}`")
    differ = [
        f"{flag} {given} (saved: {saved})"
        for flag, given, saved in _given_and_saved(args, req)
        if given is not None and given != saved
    ]
    if differ:
        raise ConfigError(
            f"--resume {args.resume} continues the search with the settings saved in {args.resume}/search.json; "
            f"these flags differ from them: {'; '.join(differ)}. Drop them, or start a new search without --resume"
        )
    return req


def _given_and_saved(args: argparse.Namespace, req: SearchRequest) -> list[tuple[str, Any, Any]]:
    """(flag, the value given in the form the search would store it, the saved value)."""
    sp = req.space
    space_file = resolve_space_file(args.model, args.space).resolve() if args.space else None
    return [
        ("--space", space_file, req.space_file),
        ("--trials", args.trials, sp.search.trials),
        ("--time-budget", args.time_budget, sp.search.time_budget_minutes),
        ("--objective", args.objective, sp.search.objective),
        ("--max-accuracy-drop", args.max_accuracy_drop, sp.constraints.max_accuracy_drop),
        ("--max-latency-ms", args.max_latency_ms, sp.constraints.max_latency_ms),
        ("--eval-samples", args.eval_samples, sp.eval.samples),
        ("--scenario", args.scenario, sp.serving.scenario),
        ("--latency-bound-ms", args.latency_bound_ms, sp.serving.latency_bound_ms),
        ("--image-size", args.image_size, sp.serving.image_size),
        ("--data", str(Path(args.data).resolve()) if args.data else None, req.data),
        ("--weights", normalise_weights(args.weights) if args.weights else None, req.weights),
        ("--seed", args.seed, req.seed),
        ("--tracking-uri", absolute_uri(args.tracking_uri) if args.tracking_uri else None, req.tracking_uri),
        ("--experiment", args.experiment, req.experiment),
        ("--output", args.output.resolve() if args.output else None, req.output),
        ("--address", args.address, req.address),
        ("--hardware", args.hardware, req.hardware),
        ("--device", args.device, req.device),
    ]
