"""Where the pick's time goes: a profile of a few batches of the saved artifact's variant,
taken after the search (never while anything is timed), each runtime with its own tool:

* torch variants: torch.profiler, as a Chrome trace (`profile.json`, opens in Perfetto or
  chrome://tracing) and its top-20 operator table (`profile_top20.txt`);
* ONNX Runtime: its own profiling JSON (`onnxruntime_profile.json`), a session on the
  saved `.onnx` file with the measured settings and profiling on;
* OpenVINO: the per-layer performance counters (`openvino_perf_counters.txt`) of the saved
  IR compiled with the measured properties and `PERF_COUNT`.

`top` is the five most expensive operator types with their share of the profiled time;
the parent run's description lists them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuner.build import BuiltVariant
from tuner.deploy.native import Native

BATCHES = 5


@dataclass
class Profile:
    files: list[Path]
    top: list[tuple[str, float]]  # (operator type, share of the profiled time)

    def text(self) -> str:
        return ", ".join(f"{op} {share:.0%}" for op, share in self.top)


def _top(times: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    total = sum(times.values()) or 1.0
    return [(op, t / total) for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:n]]


@contextlib.contextmanager
def native_stderr_dropped() -> Iterator[None]:
    """The profiler's native library (kineto) prints to file descriptor 2 ("profiler_start",
    "gpuGetDeviceCount failed" on a CPU-only box): dropped, so the terminal shows tuner's lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profile(native: Native, built: BuiltVariant, folder: Path) -> Profile:
    folder.mkdir(parents=True, exist_ok=True)
    x = native.example.numpy()
    kind = native.config["artifact"]
    if kind == "onnx":
        return _onnx(native, x, folder)
    if kind == "openvino":
        return _openvino(native, x, folder)
    return _torch(built, native.example, folder)


def _torch(built: BuiltVariant, example: torch.Tensor, folder: Path) -> Profile:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = built.prepare(example)
    with torch.inference_mode():
        built.run(x)  # warm
        with native_stderr_dropped(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(BATCHES):
                built.run(x)
    trace, table = folder / "profile.json", folder / "profile_top20.txt"
    prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    table.write_text(averages.table(sort_by="self_cpu_time_total", row_limit=20))
    times = {e.key: float(e.self_cpu_time_total) for e in averages if e.self_cpu_time_total > 0}
    return Profile([trace, table], _top(times))


def _onnx(native: Native, x: np.ndarray, folder: Path) -> Profile:
    from tuner.deploy.pyfunc_model import onnx_session

    session = onnx_session(str(native.path), native.config, profile_prefix=str(folder / "onnxruntime_profile"))
    name = session.get_inputs()[0].name
    for _ in range(BATCHES):
        session.run(None, {name: x})
    path = Path(session.end_profiling())
    final = path.rename(folder / "onnxruntime_profile.json")
    times: dict[str, float] = defaultdict(float)  # microseconds per operator type
    for event in json.loads(final.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            times[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
    return Profile([final], _top(times))


def _openvino(native: Native, x: np.ndarray, folder: Path) -> Profile:
    import openvino as ov

    props: dict[str, Any] = dict(native.config["compile"])
    requests = int(props.pop("requests", 1))
    model = ov.Core().read_model(str(native.path / "model.xml"))
    shape = list(model.input(0).get_partial_shape().to_shape())
    batch = len(x) // requests
    model.reshape([batch, *shape[1:]])
    compiled = ov.Core().compile_model(model, "CPU", {**props, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    times: dict[str, float] = defaultdict(float)  # microseconds per operator type
    lines = ["node_name\tnode_type\texec_type\treal_time_us"]
    for _ in range(BATCHES):
        request.infer([np.ascontiguousarray(x[:batch])])
    for info in request.profiling_info:  # the last call's counters
        us = info.real_time.total_seconds() * 1e6
        times[info.node_type] += us
        lines.append(f"{info.node_name}\t{info.node_type}\t{info.exec_type}\t{us:.1f}")
    path = folder / "openvino_perf_counters.txt"
    path.write_text("\n".join(lines) + "\n")
    return Profile([path], _top(times))
