"""What a nightly run reports: the verdict per model in the terminal, and the run's
`nightly-report.md` and `nightly-report.json`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tuner.core.console import say


def print_verdict(result: dict[str, Any], verdict: dict[str, Any] | None) -> None:
    say(f"\n== nightly {result['model']}:")
    if verdict is None:
        say("  regression check: nothing to compare with (no earlier champion on this hardware)")
    else:
        say(f"  regression check of {result['champion_before']}: " + ("REGRESSION" if verdict["regression"] else
            "improvement" if verdict["improvement"] else "no change beyond the noise"))  # fmt: skip
        for m, c in verdict["checks"].items():
            change = f"{c['change']:+.1%} (band {c['band']:.1%})"
            say(f"    {m:<15} {c['accepted']:.4g} -> {c['now']:.4g}  {change}  {c['verdict']}")
    say(f"  recommended: {result['recommended']}")
    how = "changed" if result["champion_changed"] else "new" if result["champion_before"] is None else "kept"
    say(f"  champion: {result['champion']} ({how}: {result['champion_reason']})")


def write_report(results: list[dict[str, Any]], run_dir: Path) -> None:
    (run_dir / "nightly-report.json").write_text(json.dumps({"models": results}, indent=2, default=_json_default))
    lines = [f"# Nightly tuning report ({time.strftime('%Y-%m-%d %H:%M')})", ""]
    for r in results:
        flag = "REGRESSION" if r.get("regression") else "improvement" if r.get("improvement") else "ok"
        lines += [f"## `{r['model']}`: {flag}", ""]
        for key, label in (("warm_start_from", "warm start from search"), ("recommended", "recommended"),
                           ("champion_before", "champion before"), ("champion", "champion now"),
                           ("champion_reason", "why"), ("status", "status"), ("output", "output")):  # fmt: skip
            if r.get(key) is not None:
                lines.append(f"- {label}: `{r[key]}`")
        verdict = r.get("regression_check")
        if verdict:
            lines += ["", "| metric | accepted | now | change | noise band | verdict |", "|---|---|---|---|---|---|"]
            for m, c in verdict["checks"].items():
                figures = f"{c['accepted']:.4g} | {c['now']:.4g} | {c['change']:+.1%} | {c['band']:.1%}"
                lines.append(f"| {m} | {figures} | {c['verdict']} |")
        lines.append("")
    (run_dir / "nightly-report.md").write_text("\n".join(lines))
    say(f"\nnightly report: {run_dir / 'nightly-report.md'} and nightly-report.json")


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)
