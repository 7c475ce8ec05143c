"""Everything MLflow (docs/architecture.md §5): experiment, parent run per search, child run per trial.

Only the driver talks to MLflow: a Tune callback (`search/tune.py`) logs each child run as its
trial finishes. Workers never open the store, so a relative or fresh sqlite database is
never initialised by several processes, and a cluster's workers need no access to it.

Child runs are written with `MlflowClient.create_run(tags={"mlflow.parentRunId": ...})` +
`log_batch` + `set_terminated` (fast, and never changes the active run of the process).
`store_lock` lets one search at a time use a sqlite store.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuner.core.errors import ConfigError, TrackingError, one_line

PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


@contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`log_model`, `load_model` of a `models:/` URI) reads the
    process-wide tracking and registry URIs: set to `uri` for the block, then put back as
    they were, unset included. `mlflow.get_*_uri()` would return the resolved default and
    pin it (and `set_*_uri` exports it to the environment, for every later subprocess), so
    the module-level settings and the two environment variables are saved instead."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old = (tracking._tracking_uri, registry._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old[0])  # type: ignore[arg-type]  # None: unset, as it was
        mlflow.set_registry_uri(old[1])  # type: ignore[arg-type]
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def registered_name(model: str) -> str:
    """`tuner-<model>`, with characters the registry dislikes in user factory names replaced."""
    return "tuner-" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)


def absolute_uri(uri: str) -> str:
    """A relative sqlite URI made absolute (`--resume` and nightly may run elsewhere)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else an sqlite file in the current directory (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Local stores keep artifacts in ./mlartifacts (absolute); servers decide for themselves."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (Path.cwd().resolve() / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str) -> None:
    """An HTTP store that does not answer fails in seconds, not after MLflow's minutes of retries."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # MLflow retries a failing sqlite open for minutes; check the obvious cases first.
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        if db.is_dir():
            raise TrackingError(
                f"--tracking-uri {uri}: {db} is a folder; name a database file, e.g. {db / 'mlflow.db'}"
            )
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"--tracking-uri {uri}: cannot create {db.parent} ({e.strerror})") from None
        return
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "localhost", port), timeout=5).close()
    except OSError as e:
        raise TrackingError(
            f"--tracking-uri {uri}: no MLflow server answers at {parsed.hostname}:{port} ({e}). "
            "Start one (see docs/mlflow.md) or use a local store, e.g. sqlite:///$PWD/mlflow.db"
        ) from None


def is_outage(e: BaseException) -> bool:
    """Whether `e` says the store did not answer, as opposed to a request it refused or a bug.

    Outages: a connection that failed or timed out (MLflow wraps those as INTERNAL_ERROR
    "API request to ... failed ..."), a 5xx from the server ("API request to endpoint ...
    failed with error code 5xx"), a locked or vanished sqlite file (TEMPORARILY_UNAVAILABLE).
    Not outages: INTERNAL_ERROR raised by MLflow around any other exception (MLflow's sqlite
    store wraps every exception that way), a request refused (INVALID_PARAMETER_VALUE, ...),
    and any exception of our own."""
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import DisconnectionError, OperationalError

    if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror, requests.RequestException)):
        return True
    if isinstance(e, (OperationalError, DisconnectionError)):  # sqlite: locked, vanished, unreadable
        return True
    if isinstance(e, MlflowException):
        if e.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"):
            return True
        return e.error_code == "INTERNAL_ERROR" and str(e.message).startswith("API request to")
    return False


def _tolerant(method: Callable[..., Any]) -> Callable[..., Any]:
    """Writes during a search never take it down: when the store stops answering, warn once,
    skip MLflow from then on (each call would otherwise wait for timeouts) and go on. Every
    result is in the output folder; `python -m tuner report --sync DIR` uploads it later.
    Only an outage (`is_outage`) counts: any other error is a bug, and is raised."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # narrowed by is_outage: everything else is re-raised
            if not is_outage(e):
                raise
            self.down = True
            print(
                f"warning: the MLflow store {self.uri} stopped answering ({one_line(e)}). "
                "The search goes on and every result is written to the output folder; upload them later "
                "with `python -m tuner report --sync OUTPUT_DIR`.",
                file=sys.stderr,
                flush=True,
            )
            return None

    return wrapper


def _is_store_error(e: BaseException) -> bool:
    """An error the store answered with (a deleted experiment of that name, a schema too
    old or too new): the user's to fix, named in the message."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(e, (MlflowException, SQLAlchemyError))


class Tracker:
    """A thin, typed layer over `MlflowClient` for the tuner's schema."""

    down = False  # set when the store stopped answering mid-search (see `_tolerant`)

    def __init__(self, uri: str, experiment: str, create: bool = True):
        """`create=False` (readers such as `report`): a missing experiment is an error, and
        nothing is written to the store."""
        from mlflow.tracking import MlflowClient

        self.uri = uri
        check_reachable(uri)
        try:
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the process-wide registry
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None and not create:
                raise ConfigError(f"--experiment {experiment}: no such experiment in {uri}")
            if exp is None:
                self.experiment_id = self._create_experiment(experiment, uri)
            else:
                self.experiment_id = exp.experiment_id
            if create and (exp is None or EXPERIMENT_KIND[0] not in exp.tags):
                # The MLflow 3 UI opens an experiment of unknown kind on its GenAI pages;
                # this kind opens the run list, where a search's runs are.
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        except Exception as e:  # narrowed below: a store problem is the user's to fix, anything else is our bug
            if not (is_outage(e) or _is_store_error(e)):
                raise
            raise TrackingError(f"--tracking-uri {uri}: cannot open the MLflow tracking store: {one_line(e)}") from None
        self.experiment = experiment

    def _create_experiment(self, experiment: str, uri: str) -> str:
        """Create it, or take the one another process created between our lookup and our
        create (a nightly job's hardware classes start their searches of one model at once)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.create_experiment(experiment, artifact_location=_artifact_root(uri)))
        except MlflowException as e:
            exp = self.client.get_experiment_by_name(experiment)
            if e.error_code != "RESOURCE_ALREADY_EXISTS" or exp is None:
                raise
            return str(exp.experiment_id)

    # ---- runs -------------------------------------------------------------------------
    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        return self.start_run(name, params, {"tuner.kind": "search", **tags})

    def start_run(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.log(run.info.run_id, params=params)
        return str(run.info.run_id)

    @_tolerant
    def reopen(self, run_id: str) -> None:
        """A resumed search logs into its first parent run again."""
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "tuner.status", "running")

    @_tolerant
    def log_child(
        self,
        parent_id: str,
        name: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str],
        failed: bool = False,
    ) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={PARENT_TAG: parent_id, "tuner.kind": "trial", **tags}
        )
        run_id = str(run.info.run_id)
        self.log(run_id, params=params, metrics=metrics)
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
        return run_id

    @_tolerant
    def log(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), now, 0)
                for k, v in (metrics or {}).items()
                if v is not None and not (isinstance(v, float) and math.isnan(v))
            ],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
        )

    @_tolerant
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @_tolerant
    def log_artifacts(self, run_id: str, folder: Path, files: list[str]) -> None:
        for f in files:
            if (folder / f).exists():
                self.client.log_artifact(run_id, str(folder / f))

    @_tolerant
    def log_artifact(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    @_tolerant
    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    @_tolerant
    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    @_tolerant
    def describe_version(self, name: str, version: str, description: str | None, tags: dict[str, str]) -> None:
        """A registered model version's description (the registry page shows it; None: kept)
        and tags."""
        if description is not None:
            self.client.update_model_version(name, version, description=description)
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, k, v)

    # ---- reading back (report, history, sync) ----------------------------------------
    def run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)

    def search(self, filter_string: str, order_by: list[str] | None = None, max_results: int = 1000) -> list[Any]:
        """Runs of this experiment that match an MLflow filter string."""
        return list(
            self.client.search_runs([self.experiment_id], filter_string, order_by=order_by, max_results=max_results)
        )

    def latest_parent(self) -> Any:
        runs = self.search("tags.`tuner.kind` = 'search'", order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def children(self, parent_id: str) -> list[Any]:
        return list(
            self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=5000)
        )


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """One search at a time per sqlite store: sqlite takes one writer, and two searches on
    one machine would also disturb each other's timings. Servers need no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(uri.removeprefix("sqlite:///").split("?")[0] + ".tuner.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"another search is using {uri}; waiting for it to finish. For searches at the same time, "
            "use an MLflow server (docs/mlflow.md) and give each search its own machine.",
            flush=True,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
