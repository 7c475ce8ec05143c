"""A registered tuner model read back (`measure --model-uri`): its files and loader config
downloaded from the store, loaded through MLflow as a deployment loads it, and wrapped as
the BuiltVariant that `trial.evaluate` times and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.core.errors import ConfigError, one_line
from tuner.core.variant import Variant
from tuner.tracking.store import fluent_uri


def download(uri: str, tracking_uri: str, dst: str) -> tuple[Path, dict[str, Any]]:
    """The model's files, in the folder `dst` (the caller's, which it removes: MLflow's own
    temporary folder would be left behind), and the loader's config; errors name the URI."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    try:
        with fluent_uri(tracking_uri):  # a models:/ URI resolves through the process-wide registry URI
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst))
        flavor = Model.load(str(local)).flavors.get("python_function", {})
    except (MlflowException, OSError) as e:
        raise ConfigError(f"--model-uri {uri}: no such model: {one_line(e)}") from None
    config = flavor.get("config") or {}  # MLmodel's name for the model_config it was logged with
    if "artifact" not in config or "variant" not in config:
        raise ConfigError(f"--model-uri {uri}: not a model tuner registered (its pyfunc config has no `artifact`)")
    return local, config


def load(uri: str, local: Path) -> Any:
    import mlflow.pyfunc

    try:
        return mlflow.pyfunc.load_model(str(local))
    except ImportError as e:
        raise ConfigError(
            f"--model-uri {uri}: it needs the package `{e.name}`, which is not installed here "
            f"(`pip install {e.name}`; the model's requirements.txt lists the versions)"
        ) from None


def registered_variant(variant: Variant, loaded: Any, local: Path) -> Any:
    """A loaded pyfunc model as a BuiltVariant: what `evaluate` times and checks."""
    import numpy as np
    import torch

    from tuner.build import BuiltVariant

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(loaded.predict(x.numpy())))

    size_mb = sum(f.stat().st_size for f in (local / "artifacts").rglob("*") if f.is_file()) / 2**20
    return BuiltVariant(variant, run, torch.nn.Identity(), torch.float32, torch.contiguous_format,
                        torch.device("cpu"), 0.0, {}, size_mb)  # fmt: skip


