"""Test-only fault injection (`inject_faults:` in a space file; docs/errors-faults.md): a trial
whose config matches a rule raises, aborts, hangs, allocates memory or runs slower, for
real, in the trial's own process, so every fault path (and the nightly regression alarm)
is tested without mocks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def _matches(rule: Any, variant: dict[str, Any]) -> bool:
    return all(str(variant.get(k)) == str(v) for k, v in rule.when.items())


def slow_call(fn: Callable[..., Any], rules: Any, fields: dict[str, Any]) -> Callable[..., Any]:
    """Test-only: `fn`, slowed by the `slow` rules whose `when` matches `fields`: each call
    takes `factor` times as long (the call is timed, then the rest is slept), plus `delay_ms`.
    A factor slows a fast and a slow config alike, as a real regression or a slower machine
    does; the machine probe matches rules with an empty `when` (every config)."""
    matching = [r for r in rules if r.action == "slow" and _matches(r, fields)]
    delay = sum(r.delay_ms for r in matching) / 1000
    factor = 1.0
    for r in matching:
        factor *= r.factor
    if delay <= 0 and factor <= 1.0:
        return fn

    def slow(*args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        # Spin, not sleep: a sleep of tens of microseconds overshoots several times over, and
        # a factor must slow a 0.1 ms call exactly as much as a 100 ms one.
        end = time.perf_counter() + (factor - 1) * (time.perf_counter() - start)
        while time.perf_counter() < end:
            pass
        if delay > 0:
            time.sleep(delay)
        return out

    return slow


def slowed(built: Any, rules: Any, variant: Any) -> Any:
    """Test-only: the built variant with `slow_call` applied to its calls (how the nightly
    tests cause a real regression, in trials and confirmation alike)."""
    run = slow_call(built.run, rules, variant.to_dict())
    if run is not built.run and built.stream is not None:
        built.stream = None  # streamed as its slowed calls, one at a time
    built.run = run
    return built


def inject(rules: list[Any], variant: dict[str, Any]) -> None:
    """Test-only: act on the first `inject_faults` rule whose `when` matches the variant."""
    for rule in rules:
        if rule.action != "slow" and _matches(rule, variant):
            if rule.action == "raise":
                raise RuntimeError("injected fault: raise (inject_faults)")
            if rule.action == "abort":
                os.abort()
            if rule.action == "hang":
                while True:
                    time.sleep(1)
            if rule.action == "allocate":
                import torch

                hoard = []
                for _ in range(rule.allocate_mb // 64):
                    hoard.append(torch.ones(64 * 2**20 // 4))  # touched, so resident
                    time.sleep(0.01)
            return
