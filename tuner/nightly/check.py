"""The nightly regression check itself: measure the champion, the baseline and the machine
probe in the same interleaved rounds (fresh processes, through the search's confirmation
function), judge the normalised figures (nightly/drift.py), and before calling a
regression measure once more to rule out a slow phase of the host. A job's model with a
serving scenario also has the champion's service measured right after each attempt's rounds,
normalised by that attempt's probe (nightly/served.py).

Shared by nightly/model.py (before each search) and benchmarks/nightly_alarms.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tuner.core.console import say
from tuner.core.variant import MachineProbe, Variant, baseline, ceiling_key
from tuner.decide.finalists import ConfirmFn, confirmed_runs
from tuner.measure.hardware import usable_cores
from tuner.nightly.drift import Measured, judge_normalised, machine_drift
from tuner.nightly.served import judge_served
from tuner.nightly.verdict import Drift, Judgement

# The champion's service measured, given tonight's probe p50 (ms): its flat figures
# (nightly/served.served_figures), empty when it could not be measured.
ServedFn = Callable[[float | None], dict[str, float]]


@dataclass
class CheckResult:
    figures: dict[str, float]  # absolute and normalised, as measured tonight (the last attempt)
    verdict: Judgement  # judge_normalised: regression / improvement, per figure
    drift: Drift | None  # machine_drift, None without stored references
    remeasured: bool = False  # a suspected regression was measured once more
    attempts: list[Judgement] = field(default_factory=list)  # each attempt's verdict


def references(champion: Variant, threads: int, probe_threads: int) -> tuple[Variant, MachineProbe]:
    """The baseline (fp32 eager, batch 1, the search's threads) and the probe of the
    champion's precision on `probe_threads`: the machine's cores, as the search's
    confirmation measured the accepted probe (a probe on fewer threads runs slower and
    would hide a regression as drift)."""
    key = ceiling_key(champion.precision.value, champion.quantization.value)
    return baseline(threads), MachineProbe(key, probe_threads)


def probe_threads_of(accepted: dict[str, float]) -> int:
    """The accepted probe's thread count (stored since its figures carry it), else the
    machine's cores, which the search's confirmation has always used."""
    return int(accepted.get("probe_threads") or usable_cores())


def measure(
    confirm_fn: ConfirmFn, champion: Variant, threads: int, rounds: int, flops_per_item: float, probe_threads: int
) -> Measured | None:
    """The three measured in `rounds` interleaved rounds; None if any of them failed."""
    base, probe = references(champion, threads, probe_threads)
    res = confirm_fn([champion, base, probe], rounds)
    champ, base_times, probe_times = confirmed_runs(res, [champion.batch_size, 1, 1])
    if champ is None or base_times is None or probe_times is None:
        return None
    probe_flops = next(float(r["probe_flops"]) for r in res[2] if r.get("probe_flops"))
    return Measured(champ, base_times, probe_times, probe_flops, flops_per_item)


def run_check(
    confirm_fn: ConfirmFn,
    champion: Variant,
    threads: int,
    rounds: int,
    flops_per_item: float,
    accepted: dict[str, float],
    threshold: float,
    drift_warning: float,
    served: ServedFn | None = None,
    served_threshold: float = 0.25,
) -> CheckResult | None:
    """Measure and judge; a suspected regression is measured once more, and only a second
    regression is called one. None when the measurement failed. `served`: the champion's
    service too, after the rounds, judged with `served_threshold`."""
    result: CheckResult | None = None
    for attempt in (1, 2):
        measured = measure(confirm_fn, champion, threads, rounds, flops_per_item, probe_threads_of(accepted))
        if measured is None:
            return result
        figures = measured.figures()
        verdict = judge_normalised(accepted, figures, threshold)
        if served is not None:
            figures.update(served(figures.get("probe_p50_ms")))
            served_checks = judge_served(accepted, figures, served_threshold)
            verdict = Judgement({**verdict.checks, **served_checks}, verdict.judged, verdict.stored)
        drift = machine_drift(accepted, figures, drift_warning)
        previous = result.attempts if result else []
        result = CheckResult(figures, verdict, drift, attempt > 1, [*previous, verdict])
        if not verdict.regression:
            return result
        if attempt == 1:
            say("  the normalised figures look worse: measuring once more to rule out a slow phase of the host ...")
    return result
