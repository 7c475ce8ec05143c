"""A reviewer's view (docs/mlflow.md): a real `mlflow server` on
127.0.0.1, a small search logged to it over HTTP, the REST API queried for the parent, the
children, their tags, the artifacts and the registered model; then Debian's chromium,
headless (selenium + chromedriver), opens the experiment page and the Pareto HTML.

Screenshots are written to `test-artifacts/` in the repository (git-ignored) and their
paths printed. The browser part is skipped only when chromium or chromedriver is not
installed (`.ci/run` installs them: `apt-get install chromium chromium-driver`), and says so.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import TESTS, mlflow_server, tuner, write_space

pytestmark = pytest.mark.slow
MODEL = "tiny_models:small_cnn"
ARTIFACTS = TESTS.parent / "test-artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def api(url: str, path: str, **params: str) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{query}", timeout=30) as r:
        return json.loads(r.read())


def search_runs(url: str, exp_id: str, flt: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [exp_id], "filter": flt, "max_results": 100}).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read()).get("runs", [])


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.fixture(scope="module")
def served_search(tmp_path_factory):
    work = tmp_path_factory.mktemp("ui")
    space = write_space(work / "space.yaml", search={"trials": 3})
    server = work / "server"
    server.mkdir()
    with mlflow_server(server) as url:
        r = tuner("search", MODEL, "--space", str(space), "--weights", "random", "--output", "out",
                  "--tracking-uri", url, cwd=work)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        exp_id = api(url, "experiments/get-by-name", experiment_name=f"tuner/{MODEL}")["experiment"]["experiment_id"]
        yield url, exp_id, work


def test_rest_api_shows_the_search(served_search):
    url, exp_id, work = served_search
    (parent,) = search_runs(url, exp_id, "tags.`tuner.kind` = 'search'")
    pid = parent["info"]["run_id"]
    ptags = tags_of(parent)
    assert parent["info"]["status"] == "FINISHED" and ptags["mlflow.note.content"].startswith("## Search of")
    children = search_runs(url, exp_id, f"tags.`mlflow.parentRunId` = '{pid}'")
    assert len(children) == 3
    for c in children:
        t = tags_of(c)
        assert {"tuner.pareto", "tuner.recommended", "tuner.status", "tuner.stable"} <= set(t)
        assert t["mlflow.runName"].endswith(("nchw", "cl"))  # the config as the run name
    pareto = search_runs(url, exp_id, "tags.`tuner.pareto` = 'true'")  # docs/mlflow.md's filter strings work
    assert 1 <= len(pareto) <= 3
    (rec,) = search_runs(url, exp_id, "tags.`tuner.recommended` = 'true'")
    assert rec["info"]["run_id"] == ptags["tuner.recommended_run_id"]
    files = {f["path"] for f in api(url, "artifacts/list", run_id=pid).get("files", [])}
    assert {"pareto.html", "pareto.png", "trials.csv", "pareto.csv", "recommended.yaml"} <= files
    alias = api(url, "registered-models/alias", name="tuner-tiny_models_small_cnn", alias="candidate")
    assert alias["model_version"]["run_id"] == pid


def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium/chromium-driver are not installed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1500,1000"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def wait_for(driver, condition, what: str, name: str) -> None:
    """Wait up to 60 s; on a timeout, keep a screenshot and say what the page showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 60).until(condition)
    except TimeoutException:
        shot = ARTIFACTS / f"{name}-timeout.png"
        driver.save_screenshot(str(shot))
        text = driver.find_element(By.TAG_NAME, "body").text[:1500]
        raise AssertionError(
            f"{what}: not seen within 60 s at {driver.current_url} ({shot}); page text:\n{text}"
        ) from None


def test_browser_lists_the_runs_and_renders_the_pareto_plot(served_search, tmp_path):
    from selenium.webdriver.common.by import By

    url, exp_id, work = served_search
    (parent,) = search_runs(url, exp_id, "tags.`tuner.kind` = 'search'")
    driver = _browser()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.get(f"{url}/#/experiments/{exp_id}/runs")  # "Training runs"
        wait_for(driver, lambda d: f"search {MODEL}" in d.find_element(By.TAG_NAME, "body").text,
                 "the parent run in the experiment's run list", "mlflow-ui-experiment")  # fmt: skip
        body = driver.find_element(By.TAG_NAME, "body").text
        assert f"tuner/{MODEL}" in body
        shot = ARTIFACTS / "mlflow-ui-experiment.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")

        # The Pareto plot as a reviewer downloads it from the run: it must render offline.
        html = tmp_path / "pareto.html"
        with urllib.request.urlopen(
            f"{url}/get-artifact?path=pareto.html&run_uuid={parent['info']['run_id']}", timeout=30
        ) as r:
            html.write_bytes(r.read())
        driver.get(html.as_uri())
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "svg.main-svg .scatterlayer"),
                 "the plotly figure in pareto.html", "pareto-html")  # fmt: skip
        points = driver.find_elements(By.CSS_SELECTOR, "svg.main-svg .scatterlayer .point")
        assert len(points) >= 3  # every ok trial, in both panels, plus the front's rings
        assert "recommended:" in driver.find_element(By.TAG_NAME, "body").text
        shot = ARTIFACTS / "pareto-html.png"
        driver.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
    shutil.copy(work / "out" / "pareto.png", ARTIFACTS / "pareto.png")
