"""README matches the code where the code has one list: the metrics, the trials.csv columns,
the commands and the layout."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import tuner
from tuner.cli.main import _parser
from tuner.core.schema import CONFIRMED_COLUMNS, METRICS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start : end if end > 0 else None]


def test_the_metrics_table_names_every_figure_a_trial_reports():
    table = _section("**Metrics**")
    missing = [m for m in (*METRICS, *CONFIRMED_COLUMNS) if f"`{m}`" not in table]
    assert not missing, f"README's Metrics table lacks {missing}"


def test_every_command_has_a_readme_section():
    sub = next(a for a in _parser()._actions if a.dest == "command")
    commands = list(sub.choices)  # type: ignore[attr-defined]
    assert {"search", "measure", "report", "nightly", "ceiling"} <= set(commands)
    for c in commands:
        assert f"### `{c}`" in README, f"README has no section for `{c}`"


def test_the_layout_table_names_every_folder_of_the_package():
    layout = _section("### Layout")
    folders = [m.name for m in pkgutil.iter_modules(tuner.__path__) if m.ispkg]
    missing = [f for f in folders if not re.search(rf"`{f}/`", layout)]
    assert not missing, f"README's Layout lacks {missing}"
