"""The served half of the nightly regression check, for a job's model with `scenario: server`
(or `offline`; docs/nightly.md).

The champion's service is what `tuner serve models:/NAME@champion` runs: the registry alias's
version with the knobs its serving search chose (`tuner.serving.*` tags; none: the default
service). Right after the in-process check's rounds, on the search's Ray and its Ray Serve
(which the serving stage then uses too), it is deployed and measured with MLPerf LoadGen in
the job's scenario (serve/tuning.measure_service, as a serving trial is): the Server
scenario's QPS at the p99 bound, or the Offline scenario's images/s.

Normalised as the in-process check is, by the machine probe measured in that check's rounds:

    served_vs_probe = served QPS x the probe's p50 (s)

the served rate in units of the probe's rate. A host twice as slow halves the QPS and doubles
the probe's p50, so it cancels; a serving path that got slower (the service, Ray Serve, the
artifact) does not. It is judged against the value stored when the champion was accepted,
with the job's `regression.served_threshold` (wider than the in-process one: a QPS found by a
bisection on a p99 is coarser than a median), and only when the scenario and the bound are
the ones it was stored with. The absolute QPS is shown beside it, never judged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tuner.core.console import say
from tuner.nightly.verdict import FigureCheck

if TYPE_CHECKING:
    from tuner.config.space import ServingSettings
    from tuner.search.cluster import HardwareClass

SERVED = "served_vs_probe"  # the judged figure
SCENARIO_CODE = {"server": 1.0, "offline": 2.0}  # stored as a metric beside the figures


def champion_uri(registered_name: str, alias: str) -> str:
    return f"models:/{registered_name}@{alias}"


def measure_served(
    uri: str, tracking_uri: str, s: ServingSettings, klass: HardwareClass, log_root: Path
) -> float | None:
    """The champion's service measured in the scenario of `s` (module docstring): its QPS at
    the bound (server) or images/s (offline); None, said, when it could not be measured (no
    config met the bound is 0.0, a measurement)."""
    from tuner.core.errors import one_line
    from tuner.search.serving import serve_port
    from tuner.serve.source import resolve, spec_for
    from tuner.serve.tuning import measure_service

    try:
        source = resolve(uri, tracking_uri)
        spec = spec_for(source, route_prefix="/nightly-check")
    except Exception as e:  # noqa: BLE001 - said; the in-process check stands on its own
        say(f"  the champion's service: not measured: {one_line(e)}")
        return None
    tuned = "its tuned knobs" if source.serving else "the default service (its version has no tuned knobs)"
    where = f"p99 <= {s.latency_bound_ms:g} ms" if s.scenario == "server" else "offline"
    say(f"  the champion's service {source.registered or uri} ({tuned}), LoadGen {s.scenario}, {where} ...")
    try:  # Serve stays up for the serving stage, which deploys on it too
        m = measure_service(spec, "nightly-check", serve_port(), s, log_root, say, klass.selector())
    except Exception as e:  # noqa: BLE001 - as a serving trial's failure: said, not judged
        say(f"  the champion's service: not measured: {one_line(e)}")
        return None
    return m.objective()


def served_figures(served: float, probe_p50_ms: float | None, s: ServingSettings) -> dict[str, float]:
    """The flat figures stored (`champion_<name>`) and compared."""
    out = {"served_qps": served, "served_scenario": SCENARIO_CODE[s.scenario],
           "served_bound_ms": s.latency_bound_ms if s.scenario == "server" else 0.0}  # fmt: skip
    if probe_p50_ms:
        out[SERVED] = served * probe_p50_ms / 1000
    return out


def comparable(accepted: dict[str, float], now: dict[str, float]) -> bool:
    """Stored for the same scenario and bound as tonight's, so the two can be compared."""
    keys = ("served_scenario", "served_bound_ms")
    return SERVED in accepted and all(accepted.get(k) == now.get(k) for k in keys)


def judge_served(accepted: dict[str, float], now: dict[str, float], threshold: float) -> dict[str, FigureCheck]:
    """`served_vs_probe` judged (a regression when lower by more than `threshold`), the
    absolute QPS shown beside it; nothing when the two are not comparable."""
    if SERVED not in now or not comparable(accepted, now):
        return {}
    checks = {}
    for name, judged in ((SERVED, True), ("served_qps", False)):
        old, new = accepted.get(name), now.get(name)
        if not old or new is None:
            continue
        change = new / old - 1
        word = "regression" if change < -threshold else "improvement" if change > threshold else "same"
        checks[name] = FigureCheck(old, new, change, threshold, word, judged=judged)  # type: ignore[arg-type]
    return checks
