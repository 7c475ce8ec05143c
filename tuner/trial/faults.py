"""Test-only fault injection (`inject_faults:` in a space file; README "Faults"): a trial
whose config matches a rule raises, aborts, hangs, allocates memory or runs slower, for
real, in the trial's own process, so every fault path (and the nightly regression alarm)
is tested without mocks."""

from __future__ import annotations

import os
import time
from typing import Any


def _matches(rule: Any, variant: dict[str, Any]) -> bool:
    return all(str(variant.get(k)) == str(v) for k, v in rule.when.items())


def slowed(built: Any, rules: Any, variant: Any) -> Any:
    """Test-only: a `slow` rule adds `delay_ms` to every call of the built variant (how the
    nightly tests cause a real regression, in trials and confirmation alike)."""
    delay = sum(r.delay_ms for r in rules if r.action == "slow" and _matches(r, variant.to_dict())) / 1000
    if delay > 0:
        run = built.run

        def slow_run(x: Any) -> Any:
            time.sleep(delay)
            return run(x)

        built.run = slow_run
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
