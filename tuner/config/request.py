"""A search request and its state file.

`SearchRequest` is everything one search needs, built by the CLI (or a nightly job) from
flags and files. `search.json` in the output folder keeps the request, the parent run and
how far the search got; `--resume` and `report --sync` read it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuner.config.space import SearchSpace
from tuner.core.errors import ConfigError
from tuner.core.variant import Device


@dataclass(frozen=True)
class SearchRequest:
    model: str
    space: SearchSpace
    space_file: Path
    weights: str
    data: str | None
    tracking_uri: str
    experiment: str
    output: Path
    seed: int = 0
    address: str | None = None
    hardware: str | None = None  # the Ray hardware class (search/cluster.py); None: the driver's own
    device: Device | None = None  # search/cluster.choose_device; None: cuda where there is a GPU
    resume: bool = False  # continue the interrupted search in `output` (see `load_request`)
    # Nightly jobs (nightly/model.py): extra parent-run tags, and configs (labels) the
    # confirmation must include (the champion, measured in the same rounds).
    tags: tuple[tuple[str, str], ...] = ()
    also_confirm: tuple[str, ...] = ()


WEIGHTS_KEYWORDS = ("auto", "pretrained", "random")  # --weights values that are not a file


def normalise_weights(weights: str, base: Path | None = None) -> str:
    """A weights file as an absolute path (relative to `base`, else the working directory):
    `--resume` and nightly may run from another folder. Keywords stay as they are."""
    if weights in WEIGHTS_KEYWORDS:
        return weights
    return str(((base or Path.cwd()) / weights).resolve())


SEARCH_STATE = "search.json"  # in the output folder: what `--resume` and `report --sync` need


def save_state(req: SearchRequest, parent_id: str, status: str, elapsed_s: float, stage: str = "model") -> None:
    """The request, the parent run and how far the search got; rewritten at each stage
    (`stage`: model, the model search and its outputs; serving, the serving search after it)."""
    (req.output / "space.yaml").write_text(yaml.safe_dump(req.space.model_dump(mode="json"), sort_keys=False))
    state = {
        "model": req.model,
        "space_file": str(req.space_file),
        "weights": req.weights,
        "data": req.data,
        "tracking_uri": req.tracking_uri,
        "experiment": req.experiment,
        "seed": req.seed,
        "address": req.address,
        "hardware": req.hardware,
        "device": req.device,
        "parent_run_id": parent_id,
        "status": status,  # running | interrupted | finished
        "stage": stage,
        "elapsed_s": elapsed_s,
    }
    (req.output / SEARCH_STATE).write_text(json.dumps(state, indent=2))


def load_state(output: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((output / SEARCH_STATE).read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--resume {output}: not a search output folder ({output / SEARCH_STATE}: {e})") from None


def load_request(output: Path) -> SearchRequest:
    """The request of the search in `output`, to resume it: every setting as it was."""
    output = output.resolve()
    st = load_state(output)
    return SearchRequest(
        model=st["model"],
        space=SearchSpace.load(output / "space.yaml"),
        space_file=Path(st["space_file"]),
        weights=st["weights"],
        data=st["data"],
        tracking_uri=st["tracking_uri"],
        experiment=st["experiment"],
        output=output,
        seed=st["seed"],
        address=st["address"],
        hardware=st.get("hardware"),  # absent in searches saved before hardware classes
        # absent in searches saved before --device: the default, as they had
        device=Device(st["device"]) if st.get("device") else None,
        resume=True,
    )
