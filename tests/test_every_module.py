"""The fast suite (`pytest -m "not slow"`) still reaches all of tuner/: every module imports,
every subpackage is imported by at least one fast test, and no test writes into the
user's real ~/.cache."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
from pathlib import Path

import pytest

import tuner

from conftest import TEST_CACHE, TESTS

ROOT = Path(tuner.__file__).resolve().parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(tuner.__path__, "tuner."))
SUBPACKAGES = sorted(m.name for m in pkgutil.iter_modules(tuner.__path__) if m.ispkg)


def test_the_walk_finds_every_source_file():
    """Every .py file under tuner/ is a module the walk sees (a folder without __init__.py,
    which the walk would skip silently, fails here)."""
    on_disk = set()
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            on_disk.add(".".join(("tuner", *parts)))
    assert set(MODULES) == on_disk
    assert {"core", "config", "inputs", "build", "measure", "trial", "decide", "outputs", "tracking", "search",
            "nightly", "cli"} <= set(SUBPACKAGES)  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


# ---- every subpackage has a fast test ---------------------------------------------------


def _is_slow(decorators: list[ast.expr]) -> bool:
    return any("mark.slow" in ast.unparse(d) for d in decorators)


def _tuner_subpackages(node: ast.AST) -> set[str]:
    """The tuner subpackages that the import statements in `node` import from."""
    found = set()
    for n in ast.walk(node):
        names = []
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names = [n.module] if n.module != "tuner" else [f"tuner.{a.name}" for a in n.names]
        elif isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        found |= {name.split(".")[1] for name in names if name.startswith("tuner.")}
    return found


def fast_imports(path: Path) -> set[str]:
    """Subpackages imported where a test that is not marked slow runs them: at module level
    of a file with at least one fast test, or inside a fast test function."""
    tree = ast.parse(path.read_text())
    for stmt in tree.body:  # `pytestmark = pytest.mark.slow` (or a list holding it): all slow;
        # `pytest.mark.gpu`: skipped on the CPU hosts the suite runs on
        if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in stmt.targets):
            if "mark.slow" in ast.unparse(stmt.value) or "mark.gpu" in ast.unparse(stmt.value):
                return set()
    tests = [
        f for f in tree.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.name.startswith("test_")
    ]
    fast = [f for f in tests if not _is_slow(f.decorator_list)]
    if not fast:
        return set()
    top = {s for s in tree.body if isinstance(s, ast.Import | ast.ImportFrom)}
    found = set().union(*(_tuner_subpackages(s) for s in top))
    for f in fast:
        found |= _tuner_subpackages(f)
    return found


def test_the_static_check_sees_slow_marks():
    assert fast_imports(TESTS / "test_e2e.py") == set()  # pytestmark = pytest.mark.slow
    assert fast_imports(TESTS / "test_gpu.py") == set()  # pytestmark: gpu, skipped without CUDA
    assert "tracking" in fast_imports(TESTS / "test_tracking.py")  # slow fixture tests, one fast test


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_subpackage_has_a_fast_test(sub):
    # This file imports every module itself: it does not count.
    files = sorted(p.name for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name and sub in fast_imports(p))
    assert files, f"no test outside `-m slow` imports from tuner.{sub}"


# ---- no test writes into ~/.cache ---------------------------------------------------------


def test_caches_resolve_under_the_tests_own_folder():
    from tuner.measure.ceiling import cache_path
    from tuner.nightly.job import lock_path

    assert Path(os.environ["XDG_CACHE_HOME"]) == TEST_CACHE and TEST_CACHE.is_dir()
    assert not TEST_CACHE.is_relative_to(Path.home() / ".cache")
    assert cache_path("x").is_relative_to(TEST_CACHE)
    assert lock_path().is_relative_to(TEST_CACHE)
