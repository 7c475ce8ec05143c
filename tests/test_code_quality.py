"""Lint and type checks run as tests, so CI's single test command covers them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff():
    r = _run("ruff", "check", "tuner", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy():
    r = _run("mypy")
    assert r.returncode == 0, r.stdout + r.stderr
