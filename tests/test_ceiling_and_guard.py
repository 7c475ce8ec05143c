"""The hardware ceiling (cached per fingerprint) and the interference guard, for real."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tuner.measure import ceiling
from tuner.measure.interference import sample_load


@pytest.fixture
def quick_ceiling(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ceiling, "SIZE", 256)
    monkeypatch.setattr(ceiling, "WINDOWS", 2)
    monkeypatch.setattr(ceiling, "WINDOW_S", 0.05)
    return tmp_path


def test_ceiling_is_measured_once_and_cached(quick_ceiling, monkeypatch):
    monkeypatch.setattr(ceiling, "BUSY_CORES", 99.0)  # cache even if the test box is busy
    first = ceiling.load_or_measure("abc123", "cpu", ["fp32", "int8"], threads=1)
    assert set(first) == {"fp32", "int8"} and all(v > 0.1 for v in first.values())
    path = ceiling.cache_path("abc123")
    assert json.loads(path.read_text()) == first

    def must_not_measure(*a, **k):
        raise AssertionError("re-measured although cached")

    monkeypatch.setattr(ceiling, "measure_ceiling", must_not_measure)
    assert ceiling.load_or_measure("abc123", "cpu", ["fp32"], threads=1) == {"fp32": first["fp32"]}


def test_busy_machine_ceiling_is_not_cached(quick_ceiling, monkeypatch):
    monkeypatch.setattr(ceiling, "BUSY_CORES", -1.0)  # everything counts as busy
    ceiling.load_or_measure("busy1", "cpu", ["fp32"], threads=1)
    assert not ceiling.cache_path("busy1").exists()


def test_ceiling_fraction_and_keys():
    assert ceiling.ceiling_fraction(4e9, 10.0, 80.0) == pytest.approx(0.5)
    assert ceiling.ceiling_key("fp32", "static_int8") == "int8"
    assert ceiling.ceiling_key("bf16", "none") == "bf16"
    assert ceiling.precisions_for("cpu", True, False) == ["fp32", "bf16", "int8"]
    assert ceiling.precisions_for("cuda", True, True) == ["fp32", "bf16", "fp16"]


def test_guard_sees_a_busy_process():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<3: pass"])
    try:
        time.sleep(0.3)
        s = sample_load(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert s.busy_cores >= 0.5
    assert any(f"({spin.pid})" in p for p in s.busy_processes), s.busy_processes
