"""The hardware's ceiling: peak throughput per precision, measured with torch's own kernels
and cached by hardware fingerprint, each figure with the probe that gave it, when it was
measured and how busy the machine was then.

A trial's `ceiling_fraction` = achieved GFLOP/s (model FLOPs per item x items/s) divided by
the ceiling of its precision. It tells how far the best config is from what the box can do
at most; memory-bound layers rarely reach 1.0, so read it as headroom.

* fp32 / tf32 (a GPU) / bf16 / fp16: `torch.mm` on square matrices (bf16/fp16 only where native; 8192 on a
  GPU, where fp16/bf16 run on its tensor cores);
* int8 (CPU only): the best of `quantized::linear` and a 3x3 `quantized::conv2d`, both with
  x86-prepacked weights, the kernel families torch.ao int8 models run on. On AVX2-only
  hosts int8 convolutions outrun the linear kernel, so a linear-only probe is no peak.

The best of several timed windows is kept: a ceiling is a maximum, not a typical value.
A fraction above 1 after a search means the figure was not this machine's peak: the search
re-measures it, and if a trial still beats it, takes the best achieved rate instead
(`refit_fractions`; search/finalize.py). `python -m tuner ceiling [--remeasure]` shows it.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tuner.core.console import say
from tuner.core.schema import TrialStatus
from tuner.core.variant import ceiling_key
from tuner.measure.hardware import Hardware
from tuner.measure.interference import sample_load

SIZE = 1024  # matmul / linear probes: SIZE x SIZE x SIZE
GPU_SIZE = 8192  # the GEMM on a GPU: 1024 would leave most of its SMs idle
CONV_CHANNELS, CONV_HW = 256, 28  # int8 conv probe: 3x3, CONV_CHANNELS in and out, CONV_HW^2 pixels
BUSY_CORES = 0.25  # other processes' CPU use above which a measured ceiling is not cached
LOAD_SAMPLE_S = 0.5  # load sampled around each precision's probes
WINDOWS = 5
WINDOW_S = 0.3
CACHE_FORMAT = 2
PROBE_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Probe = tuple[str, Callable[[], object], float]  # name, one call, FLOPs per call


@dataclass(frozen=True)
class CeilingEntry:
    gflops: float  # GFLOP/s (GOP/s for int8)
    probe: str  # the kernel that reached it, e.g. "quantized::conv2d 3x3 256ch 28x28 (x86)"
    measured_at: str  # ISO 8601 local time
    busy_cores: float  # other processes' CPU use around the measurement, in cores
    threads: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CeilingEntry:
        return cls(float(d["gflops"]), str(d["probe"]), str(d["measured_at"]), float(d["busy_cores"]),
                   int(d["threads"]))  # fmt: skip


def cache_path(fingerprint: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")  # set but empty: the default
    return root / "tuner" / f"ceiling-{fingerprint}.json"


def _best_rate(fn: Callable[[], object], flops: float, sync: Callable[[], None] | None) -> float:
    for _ in range(3):
        fn()
    best = 0.0
    for _ in range(WINDOWS):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < WINDOW_S:
            fn()
            n += 1
        if sync is not None:
            sync()
        best = max(best, flops * n / (time.perf_counter() - start))
    return best / 1e9


def _matmul(precision: str, dev: torch.device) -> Probe:
    """A square GEMM; on a GPU large enough to fill its tensor cores (fp16/bf16; fp32 runs
    without TF32, torch's default for matmuls)."""
    n = GPU_SIZE if dev.type == "cuda" else SIZE
    a, b = (torch.randn(n, n, device=dev, dtype=PROBE_DTYPES[precision]) for _ in range(2))
    name = f"torch.mm {precision} {n}x{n}"
    if dev.type != "cuda":
        return name, lambda: torch.mm(a, b), 2.0 * n**3
    tf32 = precision == "tf32"

    def mm() -> object:
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32  # fp32: off, whatever the process had
        try:
            return torch.mm(a, b)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    return f"{name} (cuda)", mm, 2.0 * n**3


def _int8_linear() -> Probe:
    a, b = torch.randn(SIZE, SIZE), torch.randn(SIZE, SIZE)
    packed = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(b, 0.05, 0, torch.qint8), None)
    xq = torch.quantize_per_tensor(a, 0.05, 128, torch.quint8)
    name = f"quantized::linear {SIZE}x{SIZE} (x86)"
    return name, lambda: torch.ops.quantized.linear(xq, packed, 1.0, 0), 2.0 * SIZE**3


def _int8_conv() -> Probe:
    c, hw = CONV_CHANNELS, CONV_HW
    w = torch.quantize_per_tensor(torch.randn(c, c, 3, 3), 0.05, 0, torch.qint8)
    packed = torch.ops.quantized.conv2d_prepack(w, None, [1, 1], [1, 1], [1, 1], 1)
    x = torch.quantize_per_tensor(torch.randn(1, c, hw, hw), 0.05, 128, torch.quint8)
    x = x.contiguous(memory_format=torch.channels_last)  # as the x86 backend's own models run
    name = f"quantized::conv2d 3x3 {c}ch {hw}x{hw} (x86)"
    return name, lambda: torch.ops.quantized.conv2d(x, packed, 1.0, 0), 2.0 * c * c * 9 * hw * hw


def _best_probe(precision: str, dev: torch.device) -> tuple[float, str] | None:
    """(GFLOP/s, probe name) of the fastest probe for this precision; None: none runs here."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    if precision in PROBE_DTYPES:
        name, fn, flops = _matmul(precision, dev)
        return _best_rate(fn, flops, sync), name
    if precision != "int8" or dev.type != "cpu":
        return None
    old = torch.backends.quantized.engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensor creation is deprecated in 2.14
            torch.backends.quantized.engine = "x86"
            probes = [_int8_linear(), _int8_conv()]
        return max((_best_rate(fn, flops, None), name) for name, fn, flops in probes)
    finally:
        torch.backends.quantized.engine = old


def probe_kernel(precision: str, device: str = "cpu") -> Probe:
    """(name, call, FLOPs per call) of the kernel that stands for the machine's speed at this
    precision, on the CPU: the GEMM for float precisions, the quantized 3x3 convolution
    (the kernel family int8 CNNs run on) for int8. Sets the x86 quantized engine, so call it
    in a process of its own (the nightly check's fresh process)."""
    if precision in PROBE_DTYPES:
        return _matmul(precision, torch.device(device))
    if precision != "int8" or device != "cpu":
        raise ValueError(f"no probe kernel for precision {precision!r} on {device}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor creation is deprecated in 2.14
        torch.backends.quantized.engine = "x86"
        return _int8_conv()


def precisions_for(device: str, bf16_native: bool, fp16_native: bool) -> list[str]:
    """The precisions whose ceiling is worth measuring on this hardware."""
    out = ["fp32"] + (["bf16"] if bf16_native else []) + (["fp16"] if fp16_native else [])
    if device == "cuda":
        return out + (["tf32"] if bf16_native else [])  # TF32 and bf16 both need compute capability 8.0+
    return out + ["int8"]


def measure_ceiling(device: str, precisions: list[str], threads: int) -> dict[str, CeilingEntry]:
    """Measure now, at `threads` intra-op threads, with the load sampled around each precision."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out: dict[str, CeilingEntry] = {}
        before = sample_load(LOAD_SAMPLE_S).busy_cores
        with torch.inference_mode():
            for p in precisions:
                best = _best_probe(p, torch.device(device))
                after = sample_load(LOAD_SAMPLE_S).busy_cores
                if best is not None:
                    when = datetime.now().astimezone().isoformat(timespec="seconds")
                    out[p] = CeilingEntry(best[0], best[1], when, round(max(before, after), 2), threads)
                before = after
        return out
    finally:
        torch.set_num_threads(old)


def read_cache(fingerprint: str) -> dict[str, CeilingEntry]:
    """The cached entries; the old flat `{precision: gflops}` file (no probe, no time, and
    an int8 figure from the linear probe alone) counts as missing."""
    try:
        doc = json.loads(cache_path(fingerprint).read_text())
        entries = doc["ceilings"] if doc.get("format") == CACHE_FORMAT else {}
        return {p: CeilingEntry.from_dict(e) for p, e in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_cache(fingerprint: str, entries: dict[str, CeilingEntry]) -> None:
    path = cache_path(fingerprint)
    doc = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "ceilings": {p: asdict(e) for p, e in entries.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)  # a concurrent reader never sees half a file
    except OSError:
        pass  # a read-only home only costs a re-measure next time


def load_entries(
    fingerprint: str, device: str, precisions: list[str], threads: int, remeasure: bool = False
) -> dict[str, CeilingEntry]:
    """The ceiling of each precision: from the cache, else (or with `remeasure`) measured now.
    A figure measured on a busy machine is too low: it is used, never cached."""
    cached = read_cache(fingerprint)
    wanted = list(precisions) if remeasure else [p for p in precisions if p not in cached]
    fresh = measure_ceiling(device, wanted, threads) if wanted else {}
    busy = {p: e for p, e in fresh.items() if e.busy_cores > BUSY_CORES}
    for p, e in busy.items():
        say(f"warning: the machine was busy ({e.busy_cores:.2f} cores) while measuring the {p} ceiling; not cached")
    if len(busy) < len(fresh):
        _write_cache(fingerprint, {**cached, **{p: e for p, e in fresh.items() if p not in busy}})
    both = {**cached, **fresh}
    return {p: both[p] for p in precisions if p in both}


def entries_for(hw: Hardware, precisions: list[str] | None = None, remeasure: bool = False) -> dict[str, CeilingEntry]:
    """This machine's ceiling entries at all its cores, for every precision it runs natively."""
    every = precisions_for(hw.device, hw.bf16_native, hw.fp16_native)
    return load_entries(hw.fingerprint, hw.device, every if precisions is None else precisions, hw.cores, remeasure)


def for_hardware(hw: Hardware) -> dict[str, float]:
    """This machine's ceiling for every precision it runs natively (cached)."""
    return {p: e.gflops for p, e in entries_for(hw).items()}


def ceiling_fraction(flops_per_item: float, throughput_ips: float, ceiling_gflops: float) -> float:
    return flops_per_item * throughput_ips / 1e9 / ceiling_gflops if ceiling_gflops > 0 else float("nan")


# ---- after a search: a fraction above 1 ----------------------------------------------------
@dataclass(frozen=True)
class Refit:
    key: str
    was_gflops: float  # the ceiling the trials were compared against
    was_fraction: float  # the highest fraction against it
    gflops: float  # the ceiling now
    source: str  # the probe that measured it, or "best achieved (<label>)"
    remeasured: float | None  # the re-measured probe figure, None if it could not be measured
    rows: tuple[Any, ...]  # the index of the trials whose fraction was recomputed


def keys_over_one(df: pd.DataFrame) -> list[str]:
    """The ceiling keys of ok trials that ran faster than their ceiling (cannot be true)."""
    if df.empty or not {"ceiling_fraction", "precision", "quantization", "status"} <= set(df.columns):
        return []
    over = df[df["status"].eq(TrialStatus.OK) & (pd.to_numeric(df["ceiling_fraction"], errors="coerce") > 1.0)]
    return sorted({ceiling_key(str(r.precision), str(r.quantization)) for r in over.itertuples()})


def refit_fractions(df: pd.DataFrame, keys: list[str], entries: dict[str, CeilingEntry]) -> list[Refit]:
    """Compare the trials of each key again, with its re-measured ceiling (`entries`); where
    an ok trial still beats it (or nothing was measured), with the best achieved rate. Sets
    `ceiling_gflops` and `ceiling_fraction` of every row of those keys in `df`. Pure."""
    out: list[Refit] = []
    if not keys:
        return out
    pairs = zip(df["precision"], df["quantization"], strict=True)
    row_keys = pd.Series([ceiling_key(str(p), str(q)) for p, q in pairs], index=df.index)
    achieved = pd.to_numeric(df["achieved_gflops"], errors="coerce")
    for key in keys:
        rows = row_keys.eq(key) & achieved.notna()
        ok = rows & df["status"].eq(TrialStatus.OK)
        if not ok.any():
            continue
        entry = entries.get(key)
        gflops, source = (entry.gflops, entry.probe) if entry is not None else (0.0, "")
        best = achieved[ok].idxmax()
        if achieved[best] > gflops:
            gflops, source = float(achieved[best]), f"best achieved ({df.at[best, 'label']})"
        # A trials.csv written before `ceiling_gflops` existed (a resumed older search) lacks it.
        was = pd.to_numeric(df["ceiling_gflops"] if "ceiling_gflops" in df else pd.Series(float("nan"), df.index),
                            errors="coerce")[ok]  # fmt: skip
        fractions = pd.to_numeric(df.loc[ok, "ceiling_fraction"], errors="coerce")
        df.loc[rows, "ceiling_gflops"] = gflops
        df.loc[rows, "ceiling_fraction"] = achieved[rows] / gflops
        remeasured = entry.gflops if entry is not None else None
        was_max, fraction_max = float(was.max()), float(fractions.max())
        out.append(Refit(key, was_max, fraction_max, gflops, source, remeasured, tuple(df.index[rows])))
    return out
