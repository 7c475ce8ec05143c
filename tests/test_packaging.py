"""tuner as a user installs it from an index: a wheel, installed without `-e` into a fresh
virtual environment, finds the search spaces it ships (not the repository's files) and runs
a search, trials in Ray workers and the registered pick included, from a folder outside
the repository. (The search uses a small space: the default space's confirmation rounds
would add a minute and test nothing about packaging; the installed CLI reads the default
space in a run that stops at the Ray cluster.)"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import TESTS, tuner_env, write_space

ROOT = TESTS.parent


@pytest.mark.slow
def test_the_wheel_installs_finds_its_spaces_and_searches(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(ROOT), "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("tuner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("tuner/search_spaces/default.yaml", "tuner/search_spaces/resnet50.yaml",
              "tuner/search_spaces/jobs/nightly.example.yaml", "tuner/data/imagenet_synsets.txt",
              "tuner/deploy/pyfunc_model.py", "tuner/serve/app.py"):  # fmt: skip
        assert f in names, f

    # A fresh environment that sees this one's dependencies (torch and the rest: installing them
    # again would take minutes), but not its editable tuner: a .pth line only adds the folder,
    # it does not run the editable install's finder.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                           text=True).strip())  # fmt: skip
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.check_output([str(py), "-c", "import tuner; print(tuner.__file__)"], text=True, cwd=tmp_path)
    assert where.startswith(str(purelib)), where  # the installed copy, not the repository's

    spaces = subprocess.run([str(py), "-c", SPACES], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert spaces.returncode == 0, spaces.stderr[-3000:]
    shipped = purelib / "tuner" / "search_spaces"
    assert spaces.stdout.split() == [str(shipped / "resnet50.yaml"), str(shipped / "default.yaml")], spaces.stdout

    # The installed CLI with the default space, as far as the Ray cluster (a class no node has:
    # exit 2 after the space is read and the reference prepared).
    cli = subprocess.run([str(py), "-m", "tuner", "search", "tiny_models:small_cnn", "--weights", "random",
                          "--address", "local", "--hardware", "no-such-class", "--output", str(tmp_path / "none")],
                         cwd=tmp_path, env=tuner_env(tmp_path), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert f"space {shipped / 'default.yaml'}" in cli.stdout, cli.stdout[-3000:] + cli.stderr[-3000:]
    assert cli.returncode == 2 and "--hardware no-such-class: no such hardware class" in cli.stderr, cli.stderr

    space = write_space(tmp_path / "small.yaml", search={"trials": 2}, confirm={"finalists": 1, "rounds": 1})
    run = subprocess.run([str(py), "-m", "tuner", "search", "tiny_models:small_cnn", "--space", str(space),
                          "--weights", "random", "--address", "local", "--output", str(tmp_path / "out")],
                         cwd=tmp_path, env=tuner_env(tmp_path), capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "RECOMMENDED:" in run.stdout and "registered as tuner-tiny_models_small_cnn/1" in run.stdout


# The installed copy's spaces: resnet50's own, and the default for a model without one; both load.
SPACES = """
from tuner.config.space import SearchSpace, resolve_space_file
for model in ("resnet50", "tiny_models:small_cnn"):
    path = resolve_space_file(model, None)
    SearchSpace.load(path)
    print(path)
"""
