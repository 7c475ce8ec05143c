"""The package's declared layers hold (import-linter contracts in pyproject.toml), and the
commands that only read (`--help`, `report`) never import torch (3 s and 800 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import tuner_env

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout


def _torch_imported(argv: list[str], cwd: Path) -> tuple[int, bool, str]:
    """Run the CLI in a fresh interpreter; (exit code, whether torch was imported, output)."""
    code = (
        "import sys\n"
        "from tuner.cli.main import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "print('TORCH', 'torch' in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=tuner_env(cwd), capture_output=True, text=True, timeout=300
    )
    return r.returncode, "TORCH True" in r.stdout, r.stdout + r.stderr


def test_help_imports_no_torch(tmp_path: Path):
    for argv in (["--help"], ["search", "--help"], ["report", "--help"], ["nightly", "--help"]):
        rc, torch_loaded, out = _torch_imported(argv, tmp_path)
        assert rc == 0 and "usage:" in out, out
        assert not torch_loaded, f"{argv} imported torch"


def test_report_imports_no_torch(tmp_path: Path):
    """A real store with one logged search (a parent and a child run, as the recorder writes
    them); `report` reads it back without importing torch."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tuner/tiny", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="search tiny", tags={"tuner.kind": "search"}).info.run_id
    child = client.create_run(
        exp,
        run_name="fp32 bs1 t1 eager nchw",
        tags={"mlflow.parentRunId": parent, "tuner.kind": "trial", "tuner.status": "ok", "tuner.trial_index": "0",
              "ray.trial_id": "t0", "tuner.baseline": "true", "tuner.pareto": "true", "tuner.recommended": "true"},
    ).info.run_id  # fmt: skip
    for k, v in {"precision": "fp32", "quantization": "none", "batch_size": "1", "threads": "1",
                 "compile": "eager", "layout": "contiguous"}.items():  # fmt: skip
        client.log_param(child, k, v)
    for k, v in {"latency_p50_ms": 2.0, "latency_p90_ms": 2.5, "throughput_ips": 400.0, "quality": 1.0}.items():
        client.log_metric(child, k, v)
    rc, torch_loaded, out = _torch_imported(["report", "--tracking-uri", uri], tmp_path)
    assert rc == 0, out
    assert "RECOMMENDED: fp32 bs1 t1 eager nchw" in out and "2.5" in out, out
    assert not torch_loaded, "report imported torch"
