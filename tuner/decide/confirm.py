"""Finalist confirmation (docs/architecture.md §3): re-measure the Pareto candidates interleaved,
A B C A B C ..., each measurement in a fresh process, and give each median a confidence
interval, so the recommendation does not rest on one lucky measurement.

Why: the search measures each config once, and picking the minimum of many noisy figures
is biased low (the winner's curse); on a shared box the process-to-process spread of one
config's p50 is several percent. Interleaving spreads slow drifts of the machine over all
candidates alike instead of penalising whoever ran during a busy minute.

The statistics here are pure numpy (no Ray, no MLflow); decide/finalists.py applies them,
with a function that measures one variant in a fresh process (search/confirm_ray.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tuner.core.schema import confirmed


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def interleaved(candidates: Sequence[object], rounds: int) -> list[tuple[int, int]]:
    """(round, candidate index) in A B C A B C order."""
    return [(r, i) for r in range(rounds) for i in range(len(candidates))]


def hierarchical_bootstrap(
    rounds: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], float],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """CI of `statistic` over per-call samples grouped by process (round).

    Resamples processes with replacement, then calls within each chosen process: the
    process-to-process spread, which dominates on a CPU box, widens the interval as it should.
    """
    groups = [np.asarray(g, dtype=float) for g in rounds if len(g)]
    if not groups:
        raise ValueError("no samples")
    point = statistic(np.concatenate(groups))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(len(groups), size=len(groups))
        stats[b] = statistic(np.concatenate([rng.choice(groups[i], size=len(groups[i])) for i in picked]))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(point), float(min(lo, point)), float(max(hi, point)))


def paired_ratio_bootstrap(
    numerator: Mapping[int, Sequence[float]],
    denominator: Mapping[int, Sequence[float]],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Interval:
    """CI of median(numerator) / median(denominator), e.g. baseline p50 over a finalist's p50
    = its speedup. Both map round -> per-call times; only rounds both have are used.

    Rounds are resampled *jointly* (a round's two measurements ran back to back), then calls
    within each measurement. A slow minute of the machine slows both sides of a pair, so
    the ratio's interval is narrower than the two medians' intervals suggest: this is why
    configs are compared as ratios measured in the same rounds.
    """
    common = sorted(set(numerator) & set(denominator))
    if not common:
        raise ValueError("no round with both measurements")
    num = [np.asarray(numerator[r], dtype=float) for r in common]
    den = [np.asarray(denominator[r], dtype=float) for r in common]
    point = float(np.median(np.concatenate(num)) / np.median(np.concatenate(den)))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(len(common), size=len(common))
        n = np.concatenate([rng.choice(num[i], size=len(num[i])) for i in picked])
        d = np.concatenate([rng.choice(den[i], size=len(den[i])) for i in picked])
        stats[b] = np.median(n) / np.median(d)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(point, float(min(lo, point)), float(max(hi, point)))


@dataclass(frozen=True)
class Confirmed:
    """Confirmed figures of one finalist: per-call times (seconds) of each fresh process."""

    rounds: tuple[tuple[float, ...], ...]
    batch_size: int
    round_ids: tuple[int, ...] = ()  # which interleaved round each measurement ran in
    # Items/s of each stream window, per process (trial/evaluate.py `_stream_rates`); empty
    # for a runtime that runs one call at a time, whose stream is its closed loop.
    stream_rounds: tuple[tuple[float, ...], ...] = ()

    def by_round(self) -> dict[int, tuple[float, ...]]:
        return dict(zip(self.round_ids or range(len(self.rounds)), self.rounds, strict=True))

    def rates_by_round(self) -> dict[int, tuple[float, ...]]:
        """Items/s samples by round, as a stream runs: the stream's windows, or each call's
        batch / time for a runtime that runs one call at a time."""
        if self.stream_rounds:
            return dict(zip(self.round_ids or range(len(self.stream_rounds)), self.stream_rounds, strict=True))
        return {r: tuple(self.batch_size / t for t in times) for r, times in self.by_round().items()}

    def speedup_over(self, baseline: Confirmed) -> Interval:
        """Baseline p50 / this p50, paired by round (paired_ratio_bootstrap)."""
        return paired_ratio_bootstrap(baseline.by_round(), self.by_round())

    @property
    def p50_ms(self) -> Interval:
        iv = hierarchical_bootstrap(self.rounds, lambda t: float(np.median(t)))
        return Interval(iv.value * 1e3, iv.low * 1e3, iv.high * 1e3)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(np.concatenate([np.asarray(r) for r in self.rounds]), 90)) * 1e3

    @property
    def throughput_ips(self) -> Interval:
        return hierarchical_bootstrap(self.rounds, lambda t: self.batch_size / float(np.mean(t)))

    @property
    def stream_ips(self) -> Interval:
        """The mean of the stream windows' items/s; one call at a time: `throughput_ips`."""
        if not self.stream_rounds:
            return self.throughput_ips
        return hierarchical_bootstrap(self.stream_rounds, lambda r: float(np.mean(r)))

    def columns(self) -> dict[str, float]:
        return {
            **interval_columns("p50_ms", self.p50_ms),
            "confirmed_p90_ms": self.p90_ms,
            **interval_columns("throughput_ips", self.throughput_ips),
            **interval_columns("stream_ips", self.stream_ips),
            "confirmed_rounds": float(len(self.rounds)),
        }


def interval_columns(figure: str, iv: Interval) -> dict[str, float]:
    """`confirmed_<figure>`, `_low`, `_high` (core.schema.confirmed)."""
    return dict(zip(confirmed(figure), (iv.value, iv.low, iv.high), strict=True))


def probe_fraction(measured: Confirmed, probe: Confirmed, flops_per_item: float, probe_flops: float) -> Interval:
    """The fraction of the machine's ceiling that `measured` reaches, with the ceiling measured
    in the same rounds: (FLOPs per item x items per call / its time) over (probe FLOPs /
    probe time) = k x probe p50 / its p50, paired by round like a speedup, so a slow phase of
    the host that slows both cancels out."""
    iv = paired_ratio_bootstrap(probe.by_round(), measured.by_round())
    k = flops_per_item * measured.batch_size / probe_flops
    return Interval(k * iv.value, k * iv.low, k * iv.high)


def lead_over(best: Confirmed, other: Confirmed, lower_is_better: bool) -> Interval:
    """How many times better `best` is than `other`, from measurements paired by round (> 1:
    better): other's p50 / best's p50 for latency; best's items/s / other's for throughput, as
    a stream runs (`Confirmed.rates_by_round`: the medians of the stream windows, or of each
    call's batch / time). Raises ValueError without a common round.

    Paired like `speedup_over`: a slow phase of the host that slows a whole round slows both,
    so the lead's interval is far narrower than the two figures' own intervals suggest."""
    if lower_is_better:
        return paired_ratio_bootstrap(other.by_round(), best.by_round())  # median(other) / median(best)
    return paired_ratio_bootstrap(best.rates_by_round(), other.rates_by_round())


def choose(
    intervals: Mapping[int, Interval],
    complexity: Mapping[int, tuple[int, ...]],
    lower_is_better: bool,
    lead: Callable[[int, int], Interval | None] | None = None,
) -> tuple[int, str]:
    """The best finalist by its confirmed figure; but if its lead over others is not
    significant, the simplest of those tied with it. With `lead(best, k)` (`lead_over`, paired
    by round), a lead is significant when its interval lies above 1; without it, or when it
    gives None, when the two intervals do not overlap. Returns (key, reason)."""
    sign = 1 if lower_is_better else -1
    best = min(intervals, key=lambda k: sign * intervals[k].value)

    def tied_with_best(k: int) -> bool:
        paired = lead(best, k) if lead is not None and k != best else None
        if paired is not None:
            return paired.low <= 1.0
        return k == best or intervals[k].overlaps(intervals[best])

    tied = [k for k in intervals if tied_with_best(k)]
    simplest = min(tied, key=lambda k: (complexity[k], sign * intervals[k].value))
    how = " by round" if lead is not None else ""
    if simplest == best:
        n = len(tied) - 1
        why = f"its lead is significant{how}" if n == 0 else f"also the simplest of {n + 1} tied finalists"
        return best, f"best confirmed figure ({why})"
    return simplest, f"the best finalist's lead was not significant{how}: chose the simpler config"
