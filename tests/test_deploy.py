"""The scheduling examples in deploy/ (docs/nightly.md): syntax, and that the docs give
the same commands."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# where they are documented
README = (ROOT / "docs" / "nightly.md").read_text() + (ROOT / "docs" / "cluster.md").read_text()
CRON_FIELD = r"(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?))*"
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_ok(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False
    for f, (lo, hi) in zip(fields, RANGES, strict=True):
        if not re.fullmatch(CRON_FIELD, f):
            return False
        if any(not lo <= int(n) <= hi for n in re.findall(r"\d+", f.split("/")[0])):
            return False
    return True


def test_crontab_line():
    (line,) = [ln for ln in (DEPLOY / "tuner-nightly.crontab").read_text().splitlines() if ln and ln[0] != "#"]
    schedule, command = " ".join(line.split()[:5]), " ".join(line.split()[5:])
    assert cron_ok(schedule) and "python -m tuner nightly search_spaces/jobs/nightly.example.yaml" in command
    assert line in README  # README documents exactly this line
    assert not cron_ok("61 2 * * *") and not cron_ok("30 2 * *")  # the check can fail


def test_systemd_units():
    service, timer = configparser.ConfigParser(), configparser.ConfigParser()
    service.optionxform = timer.optionxform = str  # keep systemd's key case
    service.read(DEPLOY / "tuner-nightly.service")
    timer.read(DEPLOY / "tuner-nightly.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("-m tuner nightly search_spaces/jobs/nightly.example.yaml")
    assert service["Service"]["ExecStart"] in README
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d", timer["Timer"]["OnCalendar"])
    assert timer["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze"):  # the real parser, where this machine has it
        r = subprocess.run(["systemd-analyze", "calendar", timer["Timer"]["OnCalendar"]], capture_output=True)
        assert r.returncode == 0, r.stderr


def test_kubernetes_cronjob():
    doc = yaml.safe_load((DEPLOY / "tuner-nightly-cronjob.yaml").read_text())
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    assert cron_ok(doc["spec"]["schedule"]) and doc["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    command = " ".join(container["command"])
    assert command.startswith("ray job submit") and command.endswith(
        "tuner nightly search_spaces/jobs/nightly.example.yaml"
    )
    assert "ray job submit" in README


@pytest.mark.parametrize("job", sorted((ROOT / "search_spaces" / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_job_files_are_valid(job):
    from tuner.nightly.job import load_job

    loaded = load_job(job)
    for m in loaded.models:
        if m.space:
            assert (job.parent / m.space).exists()


def test_kuberay_cluster_has_one_labelled_worker_group_per_hardware_class():
    doc = yaml.safe_load((DEPLOY / "tuner-raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs no trial
    classes = []
    for group in doc["spec"]["workerGroupSpecs"]:
        classes.append(group["labels"]["tuner.io/hardware"])
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["RAY_worker_niceness"] == "0"
        assert container["resources"]["requests"] == container["resources"]["limits"]  # whole cores per trial
    assert len(set(classes)) == len(classes) >= 2

    job = yaml.safe_load((DEPLOY / "tuner-nightly-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == doc["metadata"]["name"]
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("python -m tuner nightly ") and entry in README
    from tuner.nightly.job import load_job

    loaded = load_job(ROOT / entry.split()[-1])  # the job it runs tunes for the cluster's classes
    assert {m.hardware for m in loaded.models} == set(classes)
    for name in ("deploy/tuner-raycluster.yaml", "deploy/tuner-nightly-rayjob.yaml", "tuner.io/hardware"):
        assert name in README
