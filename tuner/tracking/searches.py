"""Finding a logged search in the store: by its parent run, or the latest of an experiment
(the latest `tuner/*` one by default). `report` reads searches back with it."""

from __future__ import annotations

from typing import Any

from tuner.core.errors import ConfigError, one_line
from tuner.tracking.store import Tracker


def find_search(uri: str, run_id: str | None, experiment: str | None, flag: str) -> tuple[Any, Any]:
    """The parent run `run_id`, or the latest search of `experiment` (default: the latest tuner/*)."""
    from mlflow.tracking import MlflowClient

    if run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = MlflowClient(uri).get_run(run_id)
        except MlflowException as e:
            raise ConfigError(f"{flag} {run_id}: not found in {uri}: {one_line(e)}") from None
        exp_name = MlflowClient(uri).get_experiment(run.info.experiment_id).name
        if experiment and experiment != exp_name:
            raise ConfigError(
                f"{flag} {run_id} belongs to experiment `{exp_name}`, which conflicts with "
                f"--experiment {experiment}; give one of the two"
            )
        if run.data.tags.get("tuner.kind") != "search":
            raise ConfigError(f"{flag} {run_id}: not a search's parent run (a trial's child run?)")
        return run, Tracker(uri, exp_name, create=False)
    exp_name = experiment or _latest_tuner_experiment(uri)
    tracker = Tracker(uri, exp_name, create=False)
    run = tracker.latest_parent()
    if run is None:
        raise ConfigError(f"experiment `{exp_name}` in {uri} has no tuner search yet")
    return run, tracker


def _latest_tuner_experiment(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    exps = [e for e in MlflowClient(uri).search_experiments() if e.name.startswith("tuner/")]
    if not exps:
        raise ConfigError(
            f"no tuner experiment in {uri}; run `python -m tuner search MODEL` first, or pass --experiment"
        )
    return max(exps, key=lambda e: e.last_update_time or 0).name
