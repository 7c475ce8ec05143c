"""The nightly regression check in relative terms, so that an alarm means the champion got
slower and not the machine (README "Nightly jobs").

The check re-measures three things in the same interleaved rounds, each in a fresh process:
the champion, the fp32 eager baseline and a machine probe (a GEMM of the champion's
precision; for int8 the quantized convolution the int8 models run on). A slow phase of the
host slows all three, so it cancels out of

* the **speedup**: baseline p50 / champion p50, paired by round;
* the **ceiling fraction**: the champion's achieved GFLOP/s over the probe's, paired by round.

Those two are compared with the same figures stored when the champion was accepted. The
baseline and the probe, compared with their own figures from then, tell the **machine
drift**: when both moved the same way, the machine is slower (or faster), which is reported
but is never a regression. Pure: the measurements come in as `Confirmed` per-call times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.decide.confirm import Confirmed, Interval, probe_fraction

NORMALISED = ("speedup", "ceiling_fraction")  # judged: higher is better for both
# Below this relative change a reference "did not move": the drift verdict needs both to move.
DRIFT_NOISE = 0.03


@dataclass(frozen=True)
class Measured:
    """One check's measurements: per-call times of each, by interleaved round."""

    champion: Confirmed
    baseline: Confirmed
    probe: Confirmed  # batch_size 1: one call = one probe kernel
    probe_flops: float  # FLOPs of one probe call
    flops_per_item: float  # the model's FLOPs per input

    def speedup(self) -> Interval:
        return self.champion.speedup_over(self.baseline)

    def ceiling_fraction(self) -> Interval | None:
        """Champion GFLOP/s over probe GFLOP/s, paired by round (decide.confirm.probe_fraction)."""
        if not self.flops_per_item or not self.probe_flops:
            return None
        return probe_fraction(self.champion, self.probe, self.flops_per_item, self.probe_flops)

    def figures(self) -> dict[str, float]:
        """Flat figures, as stored on the parent run (`champion_<name>`) and in the reports."""
        out: dict[str, float] = {}
        p50, thr = self.champion.p50_ms, self.champion.throughput_ips
        out.update(p50_ms=p50.value, p50_ms_low=p50.low, p50_ms_high=p50.high,
                   throughput_ips=thr.value, throughput_ips_low=thr.low, throughput_ips_high=thr.high)  # fmt: skip
        out.update(_interval("speedup", self.speedup()))
        fraction = self.ceiling_fraction()
        if fraction is not None:
            out.update(_interval("ceiling_fraction", fraction))
        out["baseline_p50_ms"] = self.baseline.p50_ms.value
        out["probe_p50_ms"] = self.probe.p50_ms.value
        return out


def _interval(name: str, iv: Interval) -> dict[str, float]:
    return {name: iv.value, f"{name}_low": iv.low, f"{name}_high": iv.high}


def _half_width(d: dict[str, float], name: str) -> float:
    v = d[name]
    low, high = d.get(f"{name}_low", v), d.get(f"{name}_high", v)
    return max(v - low, high - v) / v if v > 0 else 0.0


def judge_normalised(accepted: dict[str, float], now: dict[str, float], threshold: float) -> dict[str, Any]:
    """Regression when a normalised figure is lower now by more than its band: max(the job's
    threshold, the relative half-width of either interval). Improvement the other way.
    `stored` is False when the champion was accepted before tuner stored these figures."""
    checks: dict[str, Any] = {}
    for name in NORMALISED:
        old, new = accepted.get(name), now.get(name)
        if not old or not new:
            continue
        band = max(threshold, _half_width(accepted, name), _half_width(now, name))
        change = new / old - 1
        verdict = "regression" if change < -band else "improvement" if change > band else "same"
        checks[name] = {"accepted": old, "now": new, "change": change, "band": band, "verdict": verdict}
    return {
        "stored": any(n in accepted for n in NORMALISED),
        "regression": any(c["verdict"] == "regression" for c in checks.values()),
        "improvement": any(c["verdict"] == "improvement" for c in checks.values()),
        "checks": checks,
    }


def machine_drift(accepted: dict[str, float], now: dict[str, float], warn_at: float) -> dict[str, Any] | None:
    """How the references moved since the champion was accepted: the baseline's and the
    probe's p50, as relative changes (+0.12 = 12% slower). When both moved the same way
    beyond the noise, the machine drifted by their geometric mean."""
    refs = {}
    for name in ("baseline_p50_ms", "probe_p50_ms"):
        if accepted.get(name) and now.get(name):
            refs[name.removesuffix("_p50_ms")] = now[name] / accepted[name] - 1
    if len(refs) < 2:
        return None
    base, probe = refs["baseline"], refs["probe"]
    together = (base > DRIFT_NOISE and probe > DRIFT_NOISE) or (base < -DRIFT_NOISE and probe < -DRIFT_NOISE)
    machine = math.sqrt((1 + base) * (1 + probe)) - 1 if together else 0.0
    if together:
        text = f"machine {'slower' if machine > 0 else 'faster'} by {abs(machine):.0%}"
    elif abs(base) <= DRIFT_NOISE and abs(probe) <= DRIFT_NOISE:
        text = "no machine drift"
    else:
        text = f"references moved apart (baseline {base:+.0%}, probe {probe:+.0%}): not a uniform drift"
    return {"baseline": base, "probe": probe, "machine": machine, "together": together,
            "warning": together and abs(machine) > warn_at, "text": text}  # fmt: skip
