"""A load test as a picture (`loadtest.png` beside loadtest.json, `serving.png` beside
serving.csv; both logged to MLflow with the figures):

    left    latency against the offered QPS: p50 (open marks, dashed) and p99 (filled) of
            every server-scenario run, one colour per service, with the p99 bound; each
            service's offline rate as a dotted vertical line
    right   where an answer's time goes (loadgen.py STAGES), per scenario and service: a
            stacked bar of the mean ms of each stage, as the service's headers said

Drawn with matplotlib off-screen; nothing here runs a load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuner.serve.loadgen import STAGES
from tuner.serve.loadtest import Outcome

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
STAGE_COLOURS = {"ingress": "#bbbbbb", "read": "#8c564b", "decode": "#ff7f0e", "queue": "#9467bd",
                 "handoff": "#e377c2", "model": "#1f77b4", "answer": "#2ca02c"}  # fmt: skip


@dataclass
class Curve:
    """One service's figures, as plotted."""

    label: str
    steps: list[tuple[float, float, float]] = field(default_factory=list)  # server runs: (target QPS, p50, p99)
    offline_qps: float | None = None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # scenario -> STAGES -> mean ms


def curve(label: str, outcomes: list[Outcome]) -> Curve:
    c = Curve(label)
    for o in outcomes:
        if o.scenario == "server":
            c.steps = steps_of(o)
        if o.scenario == "offline" and o.result is not None:
            c.offline_qps = o.result.qps
        ran = o.result or (o.steps[-1] if o.steps else None)
        if ran is not None and ran.stages:
            c.stages[o.scenario] = dict(ran.stages)
    return c


def steps_of(o: Outcome) -> list[tuple[float, float, float]]:
    return sorted((float(s.target_qps), s.p50_ms, s.p99_ms) for s in o.steps if s.target_qps)


def draw(curves: Sequence[Curve], bound_ms: float, path: Path, title: str) -> Path:
    """One PNG of `curves`, at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.2, 1]})
    bars: list[tuple[str, dict[str, float]]] = []
    for i, c in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        if c.steps:
            qps = [q for q, _, _ in c.steps]
            left.plot(qps, [p50 for _, p50, _ in c.steps], "o--", mfc="none", color=colour, label=f"{c.label}: p50")
            left.plot(qps, [p99 for _, _, p99 in c.steps], "o-", color=colour, label=f"{c.label}: p99")
        if c.offline_qps is not None and math.isfinite(c.offline_qps):
            left.axvline(c.offline_qps, color=colour, ls=":", lw=1, label=f"{c.label}: offline {c.offline_qps:.0f}/s")
        for scenario, stages in c.stages.items():
            bars.append((f"{c.label}: {scenario}" if len(curves) > 1 else scenario, stages))
    left.axhline(bound_ms, color="#d62728", lw=1, label=f"bound: p99 <= {bound_ms:g} ms")
    left.set_xlabel("offered load (QPS, LoadGen's server scenario)")
    left.set_ylabel("latency (ms)")
    left.set_yscale("log")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="upper left")
    left.set_title("latency against load")
    if bars:
        names = [n for n, _ in bars]
        start = [0.0] * len(bars)
        for stage in STAGES:
            widths = [max(0.0, b.get(stage, 0.0)) for _, b in bars]
            right.barh(names, widths, left=start, color=STAGE_COLOURS[stage], label=stage)
            start = [s + w for s, w in zip(start, widths, strict=True)]
        right.invert_yaxis()
        right.tick_params(axis="y", labelsize=7)
        right.set_xlabel("mean ms per answer")
        right.legend(fontsize=7, loc="lower right")
        right.set_title("where an answer's time goes")
    else:
        right.text(0.5, 0.5, "no timing headers\n(not a tuner service)", ha="center", va="center")
        right.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
