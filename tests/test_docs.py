"""The docs match the code: README names every command, the MkDocs site builds with
`--strict` (no broken link, no missing page), its reference tables are generated from the
code and name every figure and space key, and the layout table names every package folder."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tuner
from tuner.cli.main import _parser
from tuner.config.space import SearchSpace
from tuner.core.schema import CONFIRMED_COLUMNS, METRICS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    return list(sub.choices)  # type: ignore[attr-defined]


def test_readme_has_a_synopsis_for_every_command():
    commands = _commands()
    assert {"search", "measure", "report", "nightly", "ceiling", "serve", "loadtest"} <= set(commands)
    for c in commands:
        assert f"### `{c}`" in README, f"README has no section for `{c}`"


def test_readme_is_a_first_page():
    assert len(README.splitlines()) <= 300, "README is the first page: the guides belong in docs/"


def test_the_layout_table_names_every_folder_of_the_package():
    layout = (ROOT / "docs" / "development.md").read_text().split("## Layout", 1)[1]
    folders = [m.name for m in pkgutil.iter_modules(tuner.__path__) if m.ispkg]
    missing = [f for f in folders if not re.search(rf"`{f}/`", layout)]
    assert not missing, f"docs/development.md's Layout lacks {missing}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    r = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_the_docs_build_strict_and_generate_the_metric_table(site):
    page = (site / "search" / "index.html").read_text()
    missing = [m for m in (*METRICS, *CONFIRMED_COLUMNS) if f"<code>{m}</code>" not in page]
    assert not missing, f"the generated metric table lacks {missing}"


def test_the_space_reference_names_every_key(site):
    page = (site / "space-files" / "index.html").read_text()
    for section, field in SearchSpace.model_fields.items():
        assert f"<code>{section}:</code>" in page, section
        model = field.annotation if isinstance(field.annotation, type) else None
        for key in getattr(model, "model_fields", {}):
            assert f"<code>{key}</code>" in page, f"{section}.{key}"


def test_the_commands_page_has_every_synopsis(site):
    page = (site / "commands" / "index.html").read_text()
    for c in _commands():
        assert f"python -m tuner {c}" in page, c
