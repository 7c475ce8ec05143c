#!/usr/bin/env bash
# The GPU check, as one script for a machine with a CUDA device (docs/gpus.md):
#   1. the `gpu` tests (tests/test_gpu.py);
#   2. a 12-trial `search resnet50` on the GPU (random-init weights: nothing is downloaded);
#   3. `measure` of its pick.
# Everything goes under OUT (default: ./gpu-check); the figures the closing note needs are
# in OUT/search.log (wall time, baseline and pick with confirmed intervals), OUT/lat/trials.csv
# (peak_device_mb, which families ran and which were infeasible, and why) and OUT/measure.json.
#
#   bash benchmarks/gpu_check.sh [OUT]
set -uo pipefail
OUT=${1:-gpu-check}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

$PY -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"

start=$(date +%s)
$PY -m tuner search resnet50 --weights random --trials 12 --output "$OUT/lat" \
    --tracking-uri "sqlite:///$(realpath "$OUT")/mlflow.db" 2>&1 | tee "$OUT/search.log"
echo "search wall: $(( $(date +%s) - start )) s" | tee -a "$OUT/search.log"

$PY -m tuner measure resnet50 --config "$OUT/lat/recommended.yaml" --json 2>&1 | tail -1 | tee "$OUT/measure.json"
$PY - "$OUT" <<'PY'
import sys
from pathlib import Path
from tuner.outputs.tables import read_trials
out = Path(sys.argv[1])
t = read_trials(out / "lat" / "trials.csv")
cols = ["label", "status", "latency_p50_ms", "throughput_ips", "peak_device_mb", "error"]
print(t[cols].to_string(index=False))
PY
