"""A model's nightly history in MLflow: the previous nightly search on the same hardware
(its champion and Pareto front), and the registry alias `champion`."""

from __future__ import annotations

import re
from typing import Any

from tuner.tracking.store import Tracker, registered_name


def previous_run(tracker: Tracker, fingerprint: str, hardware_class: str | None = None) -> Any | None:
    """The latest finished nightly search of this experiment on this hardware, with a champion:
    of the Ray hardware class when one is named, else of this machine's fingerprint."""
    where = (
        f"tags.`tuner.hardware_class` = '{hardware_class}'"
        if hardware_class
        else f"tags.`hw.fingerprint` = '{fingerprint}'"
    )
    runs = tracker.search(
        f"tags.`tuner.nightly` = 'true' and {where} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    return next((r for r in runs if "tuner.champion_variant" in r.data.tags), None)


def previous_front(tracker: Tracker, run: Any) -> list[dict[str, Any]]:
    """The Pareto configs (variant dicts) of a previous search."""
    children = tracker.search(
        f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and tags.`tuner.pareto` = 'true'", max_results=100
    )
    out = []
    for c in children:
        p = dict(c.data.params)
        out.append({**p, "batch_size": int(p["batch_size"]), "threads": int(p["threads"])})
    return out


def champion_alias(hardware_class: str | None) -> str:
    """The registry alias of a nightly champion: `champion`, or `champion-<class>` per class."""
    return "champion" if not hardware_class else "champion-" + re.sub(r"[^\w-]", "-", hardware_class)


def promote(tracker: Tracker, parent_id: str, model: str, hardware_class: str | None = None) -> None:
    """Move the registry alias `champion` (per class: `champion_alias`) to this search's
    registered model version."""
    run = tracker.run(parent_id)
    tag = run.data.tags.get("tuner.registered_model") if run is not None else None
    if not tag:
        return
    name, _, version = tag.rpartition("/")
    if name == registered_name(model):
        tracker.set_alias(name, champion_alias(hardware_class), version)
        tracker.log(parent_id, tags={"tuner.champion_model": f"{name}/{version}"})
