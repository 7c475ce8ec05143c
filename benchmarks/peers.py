"""What would a user get from each runtime's quick-start recipe, next to tuner's picks? Prints a
table per model (a benchmark, not a test: nothing is asserted).

    python benchmarks/peers.py                                   # resnet50 + mobilenet_v3_large
    python benchmarks/peers.py --models resnet50 --recommended out/recommended.yaml \\
        --throughput-recommended out-tput/recommended.yaml       # tuner's picks from earlier searches
    python benchmarks/peers.py --model resnet18 --rounds 1 --iters 5 --setups eager_fp32,ort_fp32  # smoke

Setups (each the documented quick-start, nothing tuned; `--setups` picks some):

  eager_fp32               torch eager fp32, `torch.set_num_threads(threads)`, inference_mode
  fx_int8                  torch FX int8: prepare_fx(get_default_qconfig_mapping("x86")), calibrate, convert_fx
  ort_fp32                 torch.onnx.export(dynamo=True, else the TorchScript exporter), ONNX Runtime's
                           CPUExecutionProvider with default SessionOptions (one export per batch size)
  ov_fp32                  ov.convert_model(model, example_input=x), compile_model(CPU, PERFORMANCE_HINT LATENCY)
  ov_nncf_int8             the same after nncf.quantize(ov_model, nncf.Dataset(calibration)) with NNCF defaults
  ov_fp32_throughput       OpenVINO's throughput recipe: the model reshaped to batch 8, PERFORMANCE_HINT
  ov_nncf_int8_throughput  THROUGHPUT, an AsyncInferQueue of OPTIMAL_NUMBER_OF_INFER_REQUESTS kept full
  tuner_latency            tuner's picks (`variant:` of a recommended.yaml) built by `tuner.build.build`;
  tuner_throughput         without `--recommended` / `--throughput-recommended` the script runs
                           `python -m tuner search <model> --weights random [--objective throughput]` first
                           (`--no-search` drops these rows instead)

Models and images are the ones tuner's own search uses (`tuner.inputs.reference`): torchvision's
architecture, random-init (nothing can be downloaded here) with its BatchNorm statistics re-estimated
where the fp32 outputs vanish (mobilenet_v3_large), synthetic 224x224 images, and 16 calibration
images disjoint from the timed ones. Every setup's top-1 agreement with torch eager fp32 over the
largest batch's images is shown (`top1_agree`): a fast recipe that changes the answers is not a
peer to beat, so the ratios are given against every peer and against the accurate ones.
The OpenVINO and ONNX Runtime recipes keep their defaults, so the table says what they chose:
`ov.convert_model` gives a dynamic-shape model, and the CPU plugin runs an "fp32" model in bf16
where the CPU has avx512_bf16/AMX (the notes column shows the precision it picked).

Figures, per setup and model:
  p50_ms           batch-1 latency: warm-up (5 calls or 2 s), then >= --iters calls and >= --min-time s,
                   each timed with perf_counter; the median call.
  best_throughput  images/s = batch / median call time for each of --batches (1,8,32), the best of them and
                   the batch that gave it (batches > 1: >= max(3, iters / batch) calls and >= --min-time s).
                   The ov_*_throughput rows: images done / wall time with the queue kept full (>= --min-time),
                   and so a tuner pick that streams (`openvino_throughput`: tuner's `stream_ips`).
                   tuner rows run at their variant's own batch size only.
Below each table: tuner's latency pick's p50 / the best peer's (any non-tuner row), and tuner's
throughput pick's images/s / the best peer's, with the same ratio per round.

Fairness (this box's CPU speed drifts by tens of % for 5-60 s at a time: only ratios of figures
measured interleaved mean anything):
  * every (setup, model) measurement runs in a fresh Python process (this script with `--_worker`),
    so no runtime's thread pools, allocator or JIT caches touch another's;
  * setups are interleaved in rounds: each round runs every setup once, the order rotated by one per
    round; each figure is the median over `--rounds` rounds (default 3);
  * every setup runs on the same `--threads` cores (default: all usable ones). The worker process is
    pinned to that many cores and gets OMP_NUM_THREADS; torch rows call torch.set_num_threads (tuner
    rows: the pick's own `threads`, via tuner's `pin_threads`). ONNX Runtime and OpenVINO are NOT
    given a thread count: a quick-start user sets none, so they size their pools from the cores
    the process may use (OpenVINO's INFERENCE_NUM_THREADS is shown in the notes).
  * a setup that fails (missing package, export error) prints `setup X failed: ...`, shows
    "failed", and is not retried in later rounds; the rest goes on.
Exports/conversions are not timed; ONNX exports are cached for the run (one per model and batch).

How long: each measurement is one process of ~20-60 s (imports, export or quantization, ~5 timed
batches); 9 setups x 3 rounds x 2 models is roughly 30-50 minutes on 2 cores, plus, without
recommended files, two tuner searches per model (each tens of minutes at the space's default
trials; `--search-args "--trials 8"` shortens them). `--json OUT` writes every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Any

MARKER = "PEERS-RESULT "  # the worker's one line of figures on stdout (libraries print there too)
PEERS = ("eager_fp32", "fx_int8", "ort_fp32", "ov_fp32", "ov_fp32_throughput", "ov_nncf_int8",
         "ov_nncf_int8_throughput")  # fmt: skip
TUNER = ("tuner_latency", "tuner_throughput")
SETUPS = PEERS + TUNER
OV_QUEUE_BATCH = 8  # the batch OpenVINO's throughput recipe is reshaped to
WARMUP_CALLS, WARMUP_S = 5, 2.0
N_CALIBRATION = 16
ISA_SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_worker":
        worker(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", "--model", dest="models", default="resnet50,mobilenet_v3_large",
                    help="comma-separated torchvision model names")  # fmt: skip
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of: {', '.join(SETUPS)}")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are their median (default 3)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cores for every setup")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes for best throughput (default 1,8,32)")
    ap.add_argument("--iters", type=int, default=50, help="at least this many timed batch-1 calls (default 50)")
    ap.add_argument("--min-time", type=float, default=3.0, help="at least this many timed seconds per figure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recommended", action="append", default=[], metavar="YAML",
                    help="recommended.yaml of a latency search (repeat for several models)")  # fmt: skip
    ap.add_argument("--throughput-recommended", action="append", default=[], metavar="YAML",
                    help="recommended.yaml of a throughput search (`--objective throughput`)")  # fmt: skip
    ap.add_argument("--no-search", action="store_true", help="no tuner rows for a model without a recommended file")
    ap.add_argument("--search-args", default="", help='extra `tuner search` arguments, e.g. "--trials 8"')
    ap.add_argument("--worker-timeout", type=float, default=1200.0, help="seconds one measurement may take")
    ap.add_argument("--work-dir", help="where searches, logs and exports go (default: a new /tmp/peers-* folder)")
    ap.add_argument("--json", metavar="OUT", help="write every figure (per round too) to this file")
    args = ap.parse_args()

    models = [m for m in args.models.split(",") if m]
    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        ap.error(f"unknown setup(s) {unknown}; known: {', '.join(SETUPS)}")
    batches = sorted({1, *(int(b) for b in args.batches.split(",") if b)})
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="peers-")).resolve()
    work.mkdir(parents=True, exist_ok=True)

    host = host_info()
    print(f"host: {host['cpu']}, {host['cores']} usable cores; {host['isa']}")
    print(f"versions: {host['versions']}")
    print(f"{args.threads} threads per setup, {args.rounds} round(s), batches {batches}; "
          f"random-init weights, synthetic inputs; work dir {work}", flush=True)  # fmt: skip

    picks = tuner_picks(args, models, setups, work)
    report: dict[str, Any] = {"host": host, "args": vars(args), "models": {}}
    for model in models:
        runs = measure_model(model, setups, picks, args, batches, work)
        rows = summarise(runs)
        ratios = tuner_ratios(runs, rows)
        print_model(model, rows, ratios, args)
        report["models"][model] = {"rows": rows, "ratios": ratios, "rounds": runs, "picks": picks.get(model, {})}
    shutil.rmtree(work / "exports", ignore_errors=True)
    if not args.work_dir and not any(work.iterdir()):
        work.rmdir()  # nothing kept (no search ran)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"figures written to {args.json}")


# ---- the parent: tuner's picks, rounds, the table ------------------------------------------


def host_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from tuner.measure.hardware import detect

    hw = detect()
    flags = hw.isa.split(",")  # the flags that matter for inference kernels (amx_bf16, amx_int8, ...)
    isa = ", ".join(f"{f} {'yes' if any(x.startswith(f) for x in flags) else 'no'}" for f in ISA_SHOWN)
    versions = []
    for pkg in ("torch", "torchvision", "onnxruntime", "openvino", "nncf"):
        try:
            versions.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    return {"cpu": hw.cpu_model, "cores": hw.cores, "isa": isa, "versions": ", ".join(versions)}


def tuner_picks(args: argparse.Namespace, models: list[str], setups: list[str], work: Path) -> dict:
    """model -> {setup: {"variant": {...}, "source": ...} or {"error": ...}} for the tuner rows."""
    import yaml

    picks: dict[str, dict[str, dict]] = {m: {} for m in models}
    for setup, files in (("tuner_latency", args.recommended), ("tuner_throughput", args.throughput_recommended)):
        for path in (p for f in files for p in f.split(",") if p):
            doc = yaml.safe_load(Path(path).read_text())
            model = doc.get("model") or (models[0] if len(models) == 1 else None)
            if model not in picks:
                print(f"{path}: for model {model!r}, not one of {models}: ignored")
                continue
            picks[model][setup] = {"variant": doc["variant"], "source": path, "label": doc.get("label", "")}
    for model in models:
        for setup in (s for s in TUNER if s in setups and s not in picks[model]):
            if args.no_search:
                continue
            picks[model][setup] = run_search(model, setup == "tuner_throughput", args.search_args, work)
    return picks


def run_search(model: str, throughput: bool, extra: str, work: Path) -> dict:
    name = f"search-{model}" + ("-throughput" if throughput else "")
    out, log = work / name, work / f"{name}.log"
    cmd = [sys.executable, "-m", "tuner", "search", model, "--weights", "random", "--output", str(out),
           "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", *shlex.split(extra)]  # fmt: skip
    if throughput:
        cmd += ["--objective", "throughput"]
    print(f"searching {model} ({'throughput' if throughput else 'latency'}) for tuner's pick; log {log}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=work).returncode  # mlartifacts/ there
    rec = out / "recommended.yaml"
    if rc != 0 or not rec.exists():
        return {"error": f"tuner search exited {rc} without recommended.yaml (log {log})"}
    import yaml

    doc = yaml.safe_load(rec.read_text())
    print(f"  done in {(time.perf_counter() - start) / 60:.1f} min: {doc.get('label', doc['variant'])}", flush=True)
    return {"variant": doc["variant"], "source": str(rec), "label": doc.get("label", "")}


def measure_model(model: str, setups: list[str], picks: dict, args: argparse.Namespace, batches: list[int],
                  work: Path) -> dict[str, list[dict]]:  # fmt: skip
    """setup -> one figures dict per round that ran it ({"error": ...} where it failed)."""
    picks = picks.get(model, {})
    setups = [s for s in setups if s not in TUNER or s in picks]  # --no-search and no file: no tuner row
    runs: dict[str, list[dict]] = {s: [] for s in setups}
    failed: set[str] = set()
    for setup in (s for s in setups if "error" in picks.get(s, {})):
        failed.add(setup)
        runs[setup].append({"error": picks[setup]["error"]})
        print(f"setup {setup} failed: {picks[setup]['error']}")
    for r in range(args.rounds):
        order = setups[r % len(setups) :] + setups[: r % len(setups)]
        for setup in (s for s in order if s not in failed):
            spec = {"setup": setup, "model": model, "threads": args.threads, "batches": batches,
                    "iters": args.iters, "min_time": args.min_time, "seed": args.seed, "work": str(work),
                    "variant": picks.get(setup, {}).get("variant")}  # fmt: skip
            start = time.perf_counter()
            figures = run_worker(spec, args.worker_timeout)
            runs[setup].append(figures)
            head = f"round {r + 1}/{args.rounds}  {setup:<24} {model} ..."
            if "error" in figures:
                failed.add(setup)
                print(f"{head} failed\nsetup {setup} failed: {figures['error']}", flush=True)
                continue
            ips, at = best_of(figures["throughput"])
            p50 = f"p50 {figures['p50_ms']:.1f} ms, " if figures.get("p50_ms") is not None else ""
            print(f"{head} {p50}{ips:.0f} img/s @ bs{at}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return runs


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            figures = json.loads(line[len(MARKER) :])
            if "throughput" in figures:
                figures["throughput"] = {int(b): v for b, v in figures["throughput"].items()}
            return figures
    tail = [ln for ln in done.stderr.splitlines() if ln.strip()]
    return {"error": f"worker exited {done.returncode}: {tail[-1] if tail else 'no output'}"}


def best_of(throughput: dict[int, float]) -> tuple[float, int]:
    at = max(throughput, key=lambda b: throughput[b])
    return throughput[at], at


def summarise(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per setup: medians over the rounds that succeeded."""
    rows = []
    for setup, figs in runs.items():
        ok = [f for f in figs if "error" not in f]
        if not ok:
            error = next((f["error"] for f in figs), "not run")
            rows.append({"setup": setup, "failed": True, "error": error})
            continue
        p50s = [f["p50_ms"] for f in ok if f.get("p50_ms") is not None]
        per_batch = {b: median(f["throughput"][b] for f in ok if b in f["throughput"]) for b in ok[0]["throughput"]}
        ips, at = best_of(per_batch)
        notes = ok[0].get("notes", "")
        if len(ok) < len(figs):
            notes = f"{len(figs) - len(ok)} of {len(figs)} rounds failed; " + notes
        agree = [f["top1_agreement"] for f in ok if f.get("top1_agreement") is not None]
        rows.append({"setup": setup, "failed": False, "p50_ms": median(p50s) if p50s else None,
                     "best_throughput": ips, "at_batch": at, "rounds": len(ok), "notes": notes,
                     "top1_agreement": median(agree) if agree else None})  # fmt: skip
    return rows


ACCURATE = 0.97  # top-1 agreement with fp32 eager at or above which a peer counts as accurate (1 in 32 may differ)


def tuner_ratios(runs: dict[str, list[dict]], rows: list[dict]) -> dict[str, dict]:
    """tuner pick / best peer for p50 and for throughput, against every peer and against the
    accurate ones only; with the same ratio round by round."""
    by = {r["setup"]: r for r in rows if not r["failed"]}

    def agreement(setup: str) -> float | None:  # a queue row runs the same model as its latency row
        own = by[setup].get("top1_agreement")
        twin = by.get(setup.removesuffix("_throughput"), {})
        return own if own is not None else twin.get("top1_agreement")

    out: dict[str, dict] = {}
    for kind, setup, key in (("latency", "tuner_latency", "p50_ms"), ("throughput", "tuner_throughput", "tput")):
        if setup not in by or value(by[setup], key) is None:
            out[kind] = {"ratio": None, "why": f"{setup} {'failed' if setup in runs else 'not run'}"}
            continue
        out[kind] = {}
        everyone = {s: r for s, r in by.items() if s in PEERS and value(r, key) is not None}
        accurate = {s: r for s, r in everyone.items() if (agreement(s) or 0.0) >= ACCURATE}
        for name, peers in (("all", everyone), ("accurate", accurate)):
            if not peers:
                out[kind][name] = {"ratio": None, "why": "no peer figures"}
                continue
            pick = (min if key == "p50_ms" else max)(peers, key=lambda s: value(peers[s], key))
            per_round = [
                value_of_round(t, key, None) / value_of_round(p, key, by[pick]["at_batch"])
                for t, p in zip(runs[setup], runs[pick], strict=False)  # round i with round i
                if "error" not in t and "error" not in p and value_of_round(t, key, None) is not None
            ]
            ratio = value(by[setup], key) / value(peers[pick], key)
            out[kind][name] = {"ratio": ratio, "best_peer": pick, "per_round": per_round}
    return out


def value(row: dict, key: str) -> float | None:
    return row["best_throughput"] if key == "tput" else row.get(key)


def value_of_round(figures: dict, key: str, batch: int | None) -> float | None:
    if key == "p50_ms":
        return figures.get("p50_ms")
    return best_of(figures["throughput"])[0] if batch is None else figures["throughput"].get(batch)


def print_model(model: str, rows: list[dict], ratios: dict[str, dict], args: argparse.Namespace) -> None:
    import pandas as pd

    def cell(r: dict, key: str, fmt: str) -> str:
        if r["failed"]:
            return "failed"
        return "-" if r.get(key) is None else format(r[key], fmt)

    def left(texts: list[str]) -> list[str]:  # pandas right-aligns: pad text columns to one width
        return [t.ljust(max(map(len, texts))) for t in texts]

    table = pd.DataFrame(
        {
            "setup": left([r["setup"] for r in rows]),
            "p50_ms": [cell(r, "p50_ms", ".2f") for r in rows],
            "best_throughput": [cell(r, "best_throughput", ".1f") for r in rows],
            "at_batch": [cell(r, "at_batch", "d") for r in rows],
            "top1_agree": [cell(r, "top1_agreement", ".3f") for r in rows],
            "notes": left([r["error"] if r["failed"] else r["notes"] for r in rows]),
        }
    )
    print(f"\n{model} (random-init weights, synthetic inputs), {args.threads} threads, median of {args.rounds} "
          f"round(s); p50 of batch-1 calls, best throughput in img/s")  # fmt: skip
    print(table.to_string(index=False, justify="left"))
    for kind, name, better in (("latency", "p50", "<1: tuner is faster"), ("throughput", "throughput", ">1: tuner")):
        for peers, rr in ratios[kind].items() if "ratio" not in ratios[kind] else [("all", ratios[kind])]:
            head = f"tuner {kind} pick / best {'accurate ' if peers == 'accurate' else ''}peer {name}:"
            if rr["ratio"] is None:
                print(f"{head} n/a ({rr['why']})")
                continue
            spread = f"{min(rr['per_round']):.2f}-{max(rr['per_round']):.2f}" if rr["per_round"] else "-"
            print(f"{head} {rr['ratio']:.2f}x (best peer: {rr['best_peer']}; per round {spread}; {better})")
    images = max(int(b) for b in args.batches.split(",") if b)
    print(f"(accurate: top-1 agreement with torch eager fp32 >= {ACCURATE} on the {images} eval images)")


# ---- the worker: one setup, one model, a fresh process --------------------------------------


def worker(spec: dict) -> None:
    """Measure one setup on one model; prints one MARKER line of JSON (figures, or an error)."""
    try:
        figures = measure_setup(spec)
    except BaseException as e:  # everything a runtime can raise, even SystemExit from a library
        from tuner.core.errors import one_line

        figures = {"error": one_line(e)}
    print(MARKER + json.dumps(figures), flush=True)


def measure_setup(spec: dict) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    if spec["threads"] < len(cores):  # before any runtime starts a thread: they all inherit it
        os.sched_setaffinity(0, cores[: spec["threads"]])
    warnings.simplefilter("ignore")
    import torch

    setup = spec["setup"]
    if setup in TUNER:
        from tuner.core.env import pin_threads
        from tuner.core.variant import Variant

        variant = Variant.from_dict(spec["variant"])
        pin_threads(variant.threads)  # as tuner's trial and `tuner measure` run it
    elif setup in ("eager_fp32", "fx_int8"):
        torch.set_num_threads(spec["threads"])

    # The model and images as tuner's own search has them (inputs/reference.py): random-init
    # weights whose BatchNorm statistics are re-estimated where the fp32 outputs vanish
    # (mobilenet_v3_large's do), synthetic images, calibration images disjoint from them.
    from tuner.inputs.models import ModelSpec, resolve_weights
    from tuner.inputs.reference import prepare_reference

    batches = spec["batches"]
    eval_batch = max(batches)
    ref = prepare_reference(resolve_weights(ModelSpec(spec["model"], "random", spec["seed"])), input_size=224,
                            n_eval=eval_batch, n_calib=N_CALIBRATION)  # fmt: skip
    model = ref.load_module().eval()
    calibration = ref.data.calibration
    reference = ref.logits.argmax(1)  # torch eager fp32 on the eval images, for top-1 agreement

    def inputs(batch: int) -> torch.Tensor:  # the first `batch` eval images (timed, and for accuracy)
        return ref.data.inputs[:batch].clone()

    if setup in ("ov_fp32_throughput", "ov_nncf_int8_throughput"):
        return ov_queue(model, calibration, inputs, setup.startswith("ov_nncf"), spec["min_time"])
    if setup == "eager_fp32":
        runner, notes = call_with(model, inputs), "torch.set_num_threads"
    elif setup == "fx_int8":
        runner, notes = fx_int8(model, calibration, inputs), "FX x86 qconfig, run eager"
    elif setup == "ort_fp32":
        runner, notes = ort(model, inputs, Path(spec["work"]) / "exports" / spec["model"])
    elif setup in ("ov_fp32", "ov_nncf_int8"):
        runner, notes = ov_latency(model, calibration, inputs, setup == "ov_nncf_int8")
    else:
        runner, notes = tuner_pick(model, variant, calibration, inputs, spec["threads"])
        batches = [variant.batch_size]

    figures: dict[str, Any] = {"p50_ms": None, "throughput": {}}
    for b in batches:
        fn = runner(b)  # exports, sessions, first-shape compiles: not timed
        calls = spec["iters"] if b == 1 else max(3, -(-spec["iters"] // b))
        with torch.inference_mode():
            times = time_calls(fn, calls, spec["min_time"])
        figures["throughput"][b] = b / median(times)
        if b == 1:
            figures["p50_ms"] = median(times) * 1e3
    built = getattr(runner, "built", None)
    if built is not None and built.stream is not None:  # OpenVINO THROUGHPUT: tuner's `stream_ips`
        batch = itertools.repeat(built.prepare(inputs(variant.batch_size)))
        with torch.inference_mode():
            built.stream(batch, WARMUP_S)
            figures["throughput"][variant.batch_size] = built.stream(batch, spec["min_time"])
        notes += "; streamed, its queue kept full (items / wall time)"
    with torch.inference_mode():
        if setup in TUNER and variant.batch_size > eval_batch:
            out = None  # no images of that count to compare on
        elif setup in TUNER:  # the pick's own batch size, over the same images
            chunks = inputs(eval_batch).split(variant.batch_size)
            out = torch.cat([built_call(runner, c) for c in chunks if len(c) == variant.batch_size])
        else:
            out = logits(runner(eval_batch)())
    if out is not None:
        figures["top1_agreement"] = float((out.argmax(1) == reference[: len(out)]).float().mean())
    figures["notes"] = notes() if callable(notes) else notes
    return figures


def logits(out):  # -> torch.Tensor: what each runtime's call returns, as one [N, classes] tensor
    import numpy as np
    import torch

    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)):
        return torch.from_numpy(np.asarray(out[0])).float()
    return torch.from_numpy(np.asarray(next(iter(out.values())))).float()  # OpenVINO's OVDict


def built_call(runner, x):
    return runner.built.run(runner.built.prepare(x)).float()


def time_calls(fn, min_calls: int, min_time: float) -> list[float]:
    start, n = time.perf_counter(), 0
    while n < 2 or (n < WARMUP_CALLS and time.perf_counter() - start < WARMUP_S):
        fn()
        n += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def fx_int8(model, calibration, inputs):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (calibration[:1],))
        for x in calibration.split(1):
            prepared(x)
        quantized = convert_fx(prepared)
    return call_with(quantized, inputs)


def call_with(module, inputs):
    """batch size -> a call of `module` on that batch (the input made once, outside the timing)."""

    def runner(b: int):
        x = inputs(b)
        return lambda: module(x)

    return runner


def ort(model, inputs, exports: Path):
    """One export (cached for the run) and one default session per batch size."""
    import onnxruntime
    import torch

    used: list[str] = []

    def export(b: int) -> Path:
        folder = exports / f"bs{b}"
        if not (folder / "exporter.txt").exists():
            for dynamo in (True, False):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                try:
                    torch.onnx.export(model, (inputs(b),), str(folder / "model.onnx"), dynamo=dynamo)
                except Exception:
                    if not dynamo:
                        raise
                    continue
                (folder / "exporter.txt").write_text("dynamo" if dynamo else "torchscript")
                break
        used.append((folder / "exporter.txt").read_text())
        return folder / "model.onnx"

    def runner(b: int):
        session = onnxruntime.InferenceSession(str(export(b)), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: inputs(b).numpy()}
        return lambda: session.run(None, feed)

    return runner, lambda: f"default SessionOptions (ORT picks its threads); {'/'.join(sorted(set(used)))} exporter"


def ov_convert(model, calibration, inputs, int8: bool):
    import openvino as ov

    ov_model = ov.convert_model(model, example_input=inputs(1))
    if int8:
        import nncf

        ov_model = nncf.quantize(ov_model, nncf.Dataset([c.numpy() for c in calibration.split(1)]))
    return ov, ov_model


def ov_settings(compiled) -> str:
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
    threads, streams = compiled.get_property("INFERENCE_NUM_THREADS"), compiled.get_property("NUM_STREAMS")
    return f"{threads} threads, {streams} stream(s), float ops in {precision}"


def ov_latency(model, calibration, inputs, int8: bool):
    ov, ov_model = ov_convert(model, calibration, inputs, int8)
    compiled = ov.Core().compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def runner(b: int):
        x = inputs(b).numpy()
        return lambda: request.infer([x])

    return runner, f"LATENCY hint, dynamic shape; {ov_settings(compiled)}"


def ov_queue(model, calibration, inputs, int8: bool, min_time: float) -> dict:
    """OpenVINO's throughput recipe: batch 8, THROUGHPUT hint, an AsyncInferQueue kept full."""
    ov, ov_model = ov_convert(model, calibration, inputs, int8)
    ov_model.reshape([OV_QUEUE_BATCH, 3, 224, 224])
    compiled = ov.Core().compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, requests)
    x = inputs(OV_QUEUE_BATCH).numpy()

    def pump(seconds: float) -> float:
        start, started = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            queue.start_async([x])  # blocks while every request is busy
            started += 1
        queue.wait_all()
        return started * OV_QUEUE_BATCH / (time.perf_counter() - start)

    pump(WARMUP_S)
    notes = f"THROUGHPUT hint, {requests} requests; {ov_settings(compiled)}"
    return {"p50_ms": None, "throughput": {OV_QUEUE_BATCH: pump(min_time)}, "notes": notes}


def tuner_pick(model, variant, calibration, inputs, threads: int):
    from tuner.build import build

    built = build(model, variant, calibration)

    def runner(b: int):
        x = built.prepare(inputs(b))
        return lambda: built.run(x)

    runner.built = built  # type: ignore[attr-defined]  # for the accuracy pass over other images

    notes = variant.label + ("" if variant.threads == threads else f" (its own {variant.threads} threads)")
    if variant.batch_size != 1:
        notes += f"; batch {variant.batch_size} only, so no batch-1 p50"
    return runner, notes


if __name__ == "__main__":
    main()
