"""The nightly regression check in relative terms, so that an alarm means the champion got
slower and not the machine (docs/nightly.md).

The check re-measures three things in the same interleaved rounds, each in a fresh process:
the champion, the fp32 eager baseline and a machine probe (a GEMM of the champion's
precision; for int8 the quantized convolution the int8 models run on). A slow phase of the
host slows all three, so it cancels out of

* the **speedup**: baseline p50 / champion p50, paired by round;
* the **ceiling fraction**: the champion's achieved GFLOP/s over the probe's, paired by round.

Those two are compared with the same figures stored when the champion was accepted; the
ceiling fraction is the one judged, the speedup is shown beside it (`judge_normalised`). The
baseline and the probe, compared with their own figures from then, tell the **machine
drift**: when both moved the same way, the machine is slower (or faster), which is reported
but is never a regression. Pure: the measurements come in as `Confirmed` per-call times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner.decide.confirm import Confirmed, Interval, probe_fraction
from tuner.nightly.verdict import Drift, FigureCheck, Judgement

NORMALISED = ("speedup", "ceiling_fraction")  # higher is better for both; the last one present is judged
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


def judge_normalised(accepted: dict[str, float], now: dict[str, float], threshold: float) -> Judgement:
    """The verdict on the *judged* figure: the ceiling fraction where both nights have one,
    else the speedup. It is a regression when that figure is lower now by more than the
    job's threshold *and* tonight's whole interval lies below the accepted value; an
    improvement the other way. The other figure is shown with its own verdict, not judged:
    the speedup leans on the fp32 eager baseline, the noisiest of the references
    (benchmarks/nightly_alarms.py saw it swing by 14-17% between checks, the int8 probe by
    about 2%). `stored` is False when the champion was accepted before tuner stored these."""
    present = [n for n in NORMALISED if accepted.get(n) and now.get(n)]
    judged = present[-1] if present else None
    checks: dict[str, FigureCheck] = {}
    for name in present:
        old, new = accepted[name], now[name]
        change = new / old - 1
        low, high = now.get(f"{name}_low", new), now.get(f"{name}_high", new)
        worse, better = change < -threshold and high < old, change > threshold and low > old
        checks[name] = FigureCheck(old, new, change, threshold, "regression" if worse else "improvement" if better
                                   else "same", judged=name == judged, low=low, high=high)  # fmt: skip
    return Judgement(checks, judged=judged, stored=any(n in accepted for n in NORMALISED))


def machine_drift(accepted: dict[str, float], now: dict[str, float], warn_at: float) -> Drift | None:
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
    return Drift(base, probe, machine, together, together and abs(machine) > warn_at, text)
