"""The hardware ceiling (cached per fingerprint, with its probe, time and load; the
`ceiling` command) and the interference guard, for real."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import datetime

import pytest

from tuner.build import infeasible
from tuner.core.errors import ConfigError
from tuner.core.variant import CompileMode, Precision, Quantization, Variant, ceiling_key
from tuner.measure import ceiling
from tuner.measure.hardware import detect
from tuner.measure.interference import sample_load


@pytest.fixture
def quick_ceiling(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ceiling, "SIZE", 256)
    monkeypatch.setattr(ceiling, "CONV_CHANNELS", 64)
    monkeypatch.setattr(ceiling, "CONV_HW", 14)
    monkeypatch.setattr(ceiling, "WINDOWS", 2)
    monkeypatch.setattr(ceiling, "WINDOW_S", 0.05)
    monkeypatch.setattr(ceiling, "LOAD_SAMPLE_S", 0.05)
    return tmp_path


def test_ceiling_is_measured_once_and_cached_with_its_provenance(quick_ceiling, monkeypatch):
    monkeypatch.setattr(ceiling, "BUSY_CORES", 99.0)  # cache even if the test box is busy
    first = ceiling.load_entries("abc123", "cpu", ["fp32", "int8"], threads=1)
    assert set(first) == {"fp32", "int8"} and all(e.gflops > 0.1 for e in first.values())
    assert first["fp32"].probe == "torch.mm fp32 256x256"
    assert first["int8"].probe.startswith(("quantized::linear", "quantized::conv2d"))
    for e in first.values():
        assert datetime.fromisoformat(e.measured_at).tzinfo is not None and e.busy_cores >= 0 and e.threads == 1
    doc = json.loads(ceiling.cache_path("abc123").read_text())
    assert doc["format"] == ceiling.CACHE_FORMAT
    assert {p: ceiling.CeilingEntry.from_dict(e) for p, e in doc["ceilings"].items()} == first

    def must_not_measure(*a, **k):
        raise AssertionError("re-measured although cached")

    monkeypatch.setattr(ceiling, "measure_ceiling", must_not_measure)
    assert ceiling.load_entries("abc123", "cpu", ["fp32"], threads=1)["fp32"].gflops == first["fp32"].gflops


def test_remeasure_replaces_only_what_it_measures(quick_ceiling, monkeypatch):
    monkeypatch.setattr(ceiling, "BUSY_CORES", 99.0)
    first = ceiling.load_entries("re1", "cpu", ["fp32", "int8"], threads=1)
    again = ceiling.load_entries("re1", "cpu", ["int8"], threads=1, remeasure=True)
    cached = ceiling.read_cache("re1")
    assert cached["fp32"] == first["fp32"] and cached["int8"] == again["int8"] != first["int8"]


def test_old_flat_cache_counts_as_missing(quick_ceiling, monkeypatch):
    monkeypatch.setattr(ceiling, "BUSY_CORES", 99.0)
    path = ceiling.cache_path("old1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fp32": 1e6, "int8": 1e6}))  # the format before provenance
    assert ceiling.read_cache("old1") == {}
    fresh = ceiling.load_entries("old1", "cpu", ["fp32"], threads=1)
    assert fresh["fp32"].gflops < 1e6 and set(ceiling.read_cache("old1")) == {"fp32"}


def test_busy_machine_ceiling_is_not_cached(quick_ceiling, monkeypatch, capsys):
    monkeypatch.setattr(ceiling, "BUSY_CORES", -1.0)  # everything counts as busy
    assert ceiling.load_entries("busy1", "cpu", ["fp32"], threads=1)["fp32"].gflops > 0
    assert not ceiling.cache_path("busy1").exists()
    assert "not cached" in capsys.readouterr().out


@pytest.mark.parametrize(("channels", "winner"), [(128, "quantized::conv2d"), (16, "quantized::linear")])
def test_int8_ceiling_is_the_best_of_linear_and_conv(quick_ceiling, monkeypatch, channels, winner):
    monkeypatch.setattr(ceiling, "CONV_CHANNELS", channels)
    monkeypatch.setattr(ceiling, "_best_rate", lambda fn, flops, sync: (fn(), flops / 1e9)[1])  # rate = FLOPs/call
    conv_flops = 2.0 * channels * channels * 9 * 14 * 14
    entry = ceiling.measure_ceiling("cpu", ["int8"], threads=1)["int8"]
    assert entry.probe.startswith(winner)
    assert entry.gflops == pytest.approx(max(conv_flops, 2.0 * 256**3) / 1e9, rel=1e-3)


def test_every_precision_the_space_can_run_has_a_ceiling():
    hw = detect()
    keys = set(ceiling.precisions_for(hw.device, hw.bf16_native, hw.fp16_native))
    allowed = 0
    for precision, quantization in itertools.product(Precision, Quantization):
        try:
            v = Variant(precision=precision, quantization=quantization, compile=CompileMode.EAGER, threads=1)
        except ConfigError:  # not a variant at all (int8 keeps fp32 activations)
            continue
        if infeasible(v, device=hw.device, fp16_native=hw.fp16_native, bf16_native=hw.bf16_native) is None:
            assert ceiling_key(precision.value, quantization.value) in keys, v.label
            allowed += 1
    assert allowed >= 1 + (hw.device == "cpu") * 2  # fp32, and the two int8 kinds on a CPU


def test_ceiling_command_prints_and_remeasures(quick_ceiling, monkeypatch, capsys):
    from tuner.cli.main import main

    monkeypatch.setattr(ceiling, "BUSY_CORES", 99.0)
    hw = detect()
    assert main(["ceiling"]) == 0
    out = capsys.readouterr().out
    entries = ceiling.read_cache(hw.fingerprint)
    assert str(ceiling.cache_path(hw.fingerprint)) in out
    assert set(entries) == set(ceiling.precisions_for(hw.device, hw.bf16_native, hw.fp16_native))
    for p, e in entries.items():
        line = next(x for x in out.splitlines() if x.startswith(f"{p} "))
        assert e.probe in line and e.measured_at in line and "measured now" in line, line

    # Backdate the cache: a plain call reads it, --remeasure replaces every entry.
    path = ceiling.cache_path(hw.fingerprint)
    doc = json.loads(path.read_text())
    for e in doc["ceilings"].values():
        e["measured_at"] = "2000-01-01T00:00:00+00:00"
    path.write_text(json.dumps(doc))
    assert main(["ceiling"]) == 0
    assert capsys.readouterr().out.count("2000-01-01T00:00:00+00:00") == len(entries)
    assert main(["ceiling", "--remeasure"]) == 0
    assert "2000-01-01" not in capsys.readouterr().out
    assert all(e.measured_at != "2000-01-01T00:00:00+00:00" for e in ceiling.read_cache(hw.fingerprint).values())


def test_ceiling_fraction_and_keys():
    assert ceiling.ceiling_fraction(4e9, 10.0, 80.0) == pytest.approx(0.5)
    assert ceiling_key("fp32", "static_int8") == "int8"
    assert ceiling_key("bf16", "none") == "bf16"
    assert ceiling.precisions_for("cpu", True, False) == ["fp32", "bf16", "int8"]
    assert ceiling.precisions_for("cpu", True, True) == ["fp32", "bf16", "fp16", "int8"]
    assert ceiling.precisions_for("cuda", True, True) == ["fp32", "bf16", "fp16", "tf32"]  # tensor cores
    assert ceiling.precisions_for("cuda", False, False) == ["fp32"]  # before Ampere: no bf16, no tf32


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
