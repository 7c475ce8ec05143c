"""What a nightly night decides, as types: one figure's comparison (`FigureCheck`), a set of
them (`Judgement`: nightly/regression.judge, nightly/drift.judge_normalised), the machine's
drift (`Drift`), tonight's verdict on the champion (`NightlyVerdict`) and one model's night
(`ModelNight`), which nightly-report.json and each model's nightly-model.json hold as JSON
(`ModelNight.to_json` / `from_json`, through pydantic's TypeAdapter)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Word = Literal["regression", "improvement", "same"]


@dataclass(frozen=True)
class FigureCheck:
    """One figure: the value the champion was accepted on against tonight's."""

    accepted: float
    now: float
    change: float  # relative (quality: the absolute difference)
    band: float  # the change within which it is the same
    verdict: Word
    judged: bool = True  # False: shown beside the judged figure, never an alarm
    low: float | None = None  # tonight's interval, for the normalised figures
    high: float | None = None


@dataclass(frozen=True)
class Judgement:
    """Figures compared; a regression (improvement) when a judged one got worse (better)."""

    checks: dict[str, FigureCheck]
    judged: str | None = None  # judge_normalised: the figure judged (ceiling_fraction, speedup) or None
    stored: bool = True  # judge_normalised: the champion has normalised figures stored

    @property
    def regression(self) -> bool:
        return any(c.verdict == "regression" for c in self.checks.values() if c.judged)

    @property
    def improvement(self) -> bool:
        return any(c.verdict == "improvement" for c in self.checks.values() if c.judged)


@dataclass(frozen=True)
class Drift:
    """How the references moved since the champion was accepted (+0.12 = 12% slower)."""

    baseline: float
    probe: float
    machine: float  # both moved together: their geometric mean; else 0
    together: bool
    warning: bool  # beyond the job's regression.drift_warning
    text: str


@dataclass(frozen=True)
class NightlyVerdict:
    """Tonight's verdict on the champion (nightly/regression.nightly_verdict)."""

    regression: bool
    improvement: bool
    checks: dict[str, FigureCheck]  # the normalised figures (one judged) and quality
    absolute: dict[str, FigureCheck]  # p50 and throughput: shown, never judged
    normalised_stored: bool
    judged: str | None  # ceiling_fraction, speedup, or None (quality only)
    drift: Drift | None
    remeasured: bool  # a suspected regression was measured once more
    now: dict[str, float]  # tonight's figures, absolute and normalised


@dataclass
class ModelNight:
    """One model's night: what the report shows and the job's exit code is decided on."""

    model: str
    hardware: str | None = None
    experiment: str = ""
    output: str = ""
    status: str | None = None  # "error: ..." or "not run (...)"; None when its search ran
    previous_search: str | None = None
    champion_before: str | None = None
    warm_start_from: str | None = None
    warm_start_configs: int = 0
    regression_check: NightlyVerdict | None = None
    regression: bool = False
    improvement: bool = False
    recommended: str | None = None
    champion: str | None = None
    champion_changed: bool = False
    champion_reason: str = ""
    champion_figures: dict[str, float] = field(default_factory=dict)  # what the champion stands on from now on
    serving: str = ""  # a serving scenario: tonight's serving search, which config won (or that none met the bound)

    @property
    def machine_drift(self) -> Drift | None:
        return self.regression_check.drift if self.regression_check else None

    def to_json(self) -> dict[str, Any]:
        drift = self.machine_drift
        return {**dataclasses.asdict(self), "machine_drift": dataclasses.asdict(drift) if drift else None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelNight:
        from pydantic import TypeAdapter

        return TypeAdapter(cls).validate_python({k: v for k, v in doc.items() if k != "machine_drift"})

