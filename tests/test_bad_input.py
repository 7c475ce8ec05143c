"""Every bad input of docs/errors-faults.md ends with one clear message that names the file, key or
flag and what is allowed, exit code 2, no traceback, and nothing written to MLflow.

The CLI runs in this process (`tuner.cli.main.main`), with a real sqlite store; only the
threads check starts Ray (it asks Ray how many cores a trial can have)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tuner.cli.main import main
from tuner.core.errors import EXIT_USAGE

from conftest import TEST_CACHE, write_space


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the arguments are the test's own


def _no_runs(db: Path) -> None:
    """Nothing was logged: the store was never created, or it holds no run at all."""
    if not db.exists():
        return
    client = MlflowClient(f"sqlite:///{db}")
    exps = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(exps), "a bad input must not leave runs behind"


def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    db = tmp_path / "mlflow.db"
    argv = [*args]
    if args[0] in ("search", "report") and "--tracking-uri" not in args:
        argv += ["--tracking-uri", f"sqlite:///{db}"]
    if args[0] == "search" and "--output" not in args:
        argv += ["--output", str(tmp_path / "out")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert err.startswith("error: ") and "Traceback" not in err
    _no_runs(db)
    return err


def space(tmp_path: Path, text: str) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return str(p)


def test_unknown_model(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet5O")
    assert "unknown model `resnet5O`" in err and "resnet50" in err and "module.path:factory" in err


def test_unimportable_factory(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "no_such_pkg.models:build")
    assert "cannot import `build` from module `no_such_pkg.models`" in err and "PYTHONPATH" in err


def test_malformed_yaml(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "tiny_models:small_cnn", "--space", space(tmp_path, "dimensions: [x"))
    assert "bad.yaml" in err and "not valid YAML" in err and "line 1" in err


def test_unknown_key(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--space", space(tmp_path, "dimensions: {batchsize: [1]}"))
    assert "bad.yaml" in err and "`dimensions.batchsize`" in err and "unknown key" in err and "batch_size" in err


def test_wrong_type(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--space", space(tmp_path, "search: {trials: many}"))
    assert "bad.yaml" in err and "`search.trials`" in err and "integer" in err


def test_empty_choice_list(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--space", space(tmp_path, "dimensions: {compile: []}"))
    assert "bad.yaml" in err and "`dimensions.compile`" in err and "at least 1" in err


def test_batch_size_below_one(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--space", space(tmp_path, "dimensions: {batch_size: [0]}"))
    assert "bad.yaml" in err and "`dimensions.batch_size`" in err and ">= 1" in err


@pytest.mark.slow  # starts Ray, prepares the reference and measures the hardware ceiling first
def test_threads_above_the_cores_ray_can_give(tmp_path, capsys):
    from tuner.measure.ceiling import cache_path
    from tuner.measure.hardware import detect

    # The ceiling goes to the session's cache folder (conftest), never the user's ~/.cache.
    ours = cache_path(detect().fingerprint)
    assert ours.is_relative_to(TEST_CACHE)
    users = Path.home() / ".cache" / ours.relative_to(TEST_CACHE)
    before = users.stat().st_mtime_ns if users.exists() else None
    cores = os.cpu_count() or 1
    f = write_space(tmp_path / "threads.yaml", dimensions={"threads": [1, cores + 1]})
    err = run_cli(tmp_path, capsys, "search", "tiny_models:small_cnn", "--space", str(f), "--weights", "random")
    assert "threads.yaml" in err and "`dimensions.threads`" in err and f"lists [{cores + 1}]" in err
    assert f"at most {cores} core(s)" in err
    assert (users.stat().st_mtime_ns if users.exists() else None) == before


def test_missing_data_folder(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--data", str(tmp_path / "imagenet-val"))
    assert f"--data {tmp_path / 'imagenet-val'}: no such folder" in err and "class sub-folders" in err


def test_missing_weights_file(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--weights", "ckpt.pt")
    assert f"--weights {tmp_path / 'ckpt.pt'}: no such file" in err and "pretrained, random" in err


def test_unreachable_tracking_uri_is_checked_before_any_trial(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--tracking-uri", "http://127.0.0.1:9")
    assert "--tracking-uri http://127.0.0.1:9: no MLflow server answers" in err and "sqlite:///" in err
    assert not (tmp_path / "out" / "trials.csv").exists()


def test_read_only_output_folder(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through file modes; sysfs refuses new folders even to root
        target = Path("/sys/tuner-read-only-test")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        target = tmp_path / "ro" / "out"
    err = run_cli(tmp_path, capsys, "search", "resnet18", "--output", str(target))
    assert f"--output {target}: cannot write there" in err


def test_conflicting_flags(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, "search", "tiny_models:small_cnn", "--weights", "pretrained")
    assert "--weights pretrained conflicts with the model `tiny_models:small_cnn`" in err and "--weights auto" in err


def test_report_conflicting_run_and_experiment(tmp_path, capsys):
    from tuner.tracking.store import Tracker

    uri = f"sqlite:///{tmp_path / 'report.db'}"
    tracker = Tracker(uri, "tuner/a")
    run_id = tracker.start_parent("search a", {}, {})
    assert main(["report", "--tracking-uri", uri, "--run-id", run_id, "--experiment", "tuner/b"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--run-id {run_id} belongs to experiment `tuner/a`" in err and "--experiment tuner/b" in err


def test_measure_threads_above_the_cores(tmp_path, capsys):
    cores = os.cpu_count() or 1
    cfg = tmp_path / "v.yaml"
    cfg.write_text(f"variant: {{threads: {cores + 1}}}\n")
    err = run_cli(tmp_path, capsys, "measure", "resnet18", "--config", str(cfg))
    assert f"`variant.threads` is {cores + 1}; this machine has {cores} cores" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_measure_on_cuda_without_a_gpu_says_what_torch_sees(tmp_path, capsys):
    cfg = tmp_path / "v.yaml"
    cfg.write_text("variant: {threads: 1}\n")
    err = run_cli(tmp_path, capsys, "measure", "resnet18", "--config", str(cfg), "--device", "cuda")
    assert "--device cuda: torch sees no CUDA device here" in err and f"torch {torch.__version__}" in err


def test_a_class_process_flag_alone_is_refused_not_the_whole_job_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were it run, the job would write here
    job = tmp_path / "job.yaml"
    job.write_text("models:\n  - model: resnet18\n")
    assert main(["nightly", str(job), "--only-class", "a"]) == EXIT_USAGE
    assert "--only-class and --run-dir go together" in capsys.readouterr().err
    assert not (tmp_path / "nightly-results").exists()


def test_job_file_errors_name_the_file_and_key(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("models:\n  - model: resnet18\n    trails: 4\n")
    assert main(["nightly", str(job)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{job}: invalid job file" in err and "`models[0].trails`: unknown key; allowed here: model, space" in err
    job.write_text("models: []\n")
    assert main(["nightly", str(job)]) == EXIT_USAGE
    assert "`models`" in capsys.readouterr().err
    assert main(["nightly", str(tmp_path / "absent.yaml")]) == EXIT_USAGE
    assert "job file not found" in capsys.readouterr().err
    job.write_text("models:\n  - model: resnet18\n    scenario: sever\n    latency_bound_ms: 0\n")
    assert main(["nightly", str(job)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "`models[0].scenario`: Input should be 'single-stream', 'server' or 'offline' (got 'sever')" in err
    assert "`models[0].latency_bound_ms`: Input should be greater than 0" in err


def _saved_search(tmp_path: Path) -> Path:
    """An interrupted search's output folder, as `search` leaves it (state and space)."""
    from tuner.config.request import SearchRequest, save_state
    from tuner.config.space import SearchSpace

    out = tmp_path / "out"
    out.mkdir()
    space = SearchSpace.load(write_space(tmp_path / "space.yaml")).with_overrides(search={"trials": 4})
    req = SearchRequest("tiny_models:small_cnn", space, (tmp_path / "space.yaml").resolve(), "random", None,
                        f"sqlite:///{tmp_path / 'mlflow.db'}", "tuner/tiny", out)  # fmt: skip
    save_state(req, "parent-run-id", "interrupted", 12.0)
    return out


def test_resume_refuses_only_the_flags_that_differ(tmp_path, capsys):
    out = _saved_search(tmp_path)
    err = run_cli(tmp_path, capsys, "search", "tiny_models:small_cnn", "--resume", str(out), "--trials", "9",
                  "--weights", "random", "--experiment", "tuner/other")  # fmt: skip
    assert "--trials 9 (saved: 4)" in err and "--experiment tuner/other (saved: tuner/tiny)" in err
    assert "--weights" not in err  # equal to the saved value: accepted


def test_resume_accepts_the_command_that_started_the_search(tmp_path):
    """The first thing a user types: the same command with `--resume DIR` added."""
    from tuner.cli.main import _parser
    from tuner.cli.search import _resumed

    out = _saved_search(tmp_path)
    args = _parser().parse_args(["search", "tiny_models:small_cnn", "--space", str(tmp_path / "space.yaml"),
                                 "--trials", "4", "--weights", "random", "--tracking-uri",
                                 f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "tuner/tiny", "--output",
                                 str(out), "--seed", "0", "--resume", str(out)])  # fmt: skip
    req = _resumed(args)
    assert req.resume and req.output == out.resolve() and req.space.search.trials == 4
