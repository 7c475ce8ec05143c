"""The recommended variant as a deployable MLflow model (docs/mlflow.md).

The variant is saved in its runtime's own form (deploy/native.py) and logged under the
search's parent run with `mlflow.pyfunc.log_model` as "models from code": the loader
deploy/pyfunc_model.py travels with the model and imports no tuner module, so the model
loads where mlflow, numpy and the runtime's package are installed. Its `pip_requirements`
are exactly those. It is registered as `tuner-<model>` with the alias `candidate` (the
nightly job moves `champion`); the version's description and tags carry the variant, the
confirmed figures with their intervals, the hardware fingerprint, and the weights and
data labels.

After logging, the model is loaded back through MLflow and its outputs compared with the
built variant's (`tuner.model_check` on the parent run): a model that does not reproduce
what was measured is reported, not hidden. The same loaded model measures how far the
service's fast JPEG decode moves its outputs (inputs/images.py), on the search's own images
(`--data`) or, without them, on photo-like JPEGs of several sizes: the version's
`tuner.decode.*` tags, which `tuner serve` reads to choose its decode path.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tuner.build import torch_settings_kept
from tuner.core.console import say
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.schema import confirmed
from tuner.core.variant import Variant
from tuner.deploy.native import Native, save_native
from tuner.inputs.images import PHOTO_SIZES, Agreement, ImagePrep, measure_agreement, photo_set
from tuner.inputs.reference import Reference
from tuner.tracking.store import Tracker, fluent_uri, registered_name

LOADER = Path(__file__).with_name("pyfunc_model.py")

# What the version's description and tags carry from the recommended row.
CONFIRMED = (("p50 ms", "p50_ms"), ("items/s", "throughput_ips"), ("speedup x", "speedup_vs_baseline"))


def confirmed_text(row: pd.Series) -> str:
    parts = []
    for name, figure in CONFIRMED:
        value, low, high = confirmed(figure)
        if pd.notna(row.get(value, float("nan"))):
            parts.append(f"{name} {row[value]:.4g} [{row[low]:.4g}, {row[high]:.4g}]")
    return ", ".join(parts) or "not confirmed (search-time figures only)"


def log_and_register(
    row: pd.Series,
    variant: Variant,
    ref: Reference,
    tracker: Tracker,
    parent_id: str,
    model: str,
    hardware: str,
    hardware_class: str = "",
    max_drop: float = 0.01,
) -> dict[str, str]:
    """Save, log under the parent run, register as `tuner-<model>` @ candidate, describe the
    version, load it back and compare, measure the fast decode's agreement against
    `max_drop` (the search's accuracy limit). Returns tags for the parent run."""
    name = registered_name(model)
    # The build, the load-back and the profile run in the driver: its torch settings are kept.
    with fluent_uri(tracker.uri), torch_settings_kept(), tempfile.TemporaryDirectory(prefix="tuner-export-") as tmp:
        native = save_native(variant, ref, Path(tmp) / "artifact")
        info = _log_model(native, row, ref, model, hardware, parent_id, register_as=name)
        size_mb = native.size_mb
        version = str(info.registered_model_version)
        tracker.set_alias(name, "candidate", version)
        check, agreement = _check(info.model_uri, native, ref, model)
        prof = _profile(native, Path(tmp) / "profile", tracker, str(row.get("mlflow_run_id") or ""))
    description = (
        f"{variant.label}: {native.how}.\n\nConfirmed on {hardware}: {confirmed_text(row)}.\n\n"
        f"Weights: {ref.weights_label}. Data: {ref.data_label}. Artifact: {size_mb:.1f} MB. "
        f"Loaded back through MLflow: {check}."
    )
    tracker.describe_version(name, version, description, {
        "tuner.variant": variant.label, "tuner.artifact": native.config["artifact"], "tuner.hardware": hardware,
        "tuner.confirmed": confirmed_text(row), "tuner.weights": ref.weights_label, "tuner.data": ref.data_label,
        "tuner.search_run": parent_id, **({"tuner.hardware_class": hardware_class} if hardware_class else {}),
        **(agreement.tags(max_drop) if agreement else {}),
    })  # fmt: skip
    return {
        **({"tuner.decode": agreement.text(max_drop)} if agreement else {}),
        "tuner.model_uri": info.model_uri,
        "tuner.registered_model": f"{name}/{version}",
        "tuner.model_export": native.how,
        "tuner.model_artifact": f"{native.config['artifact']} ({size_mb:.1f} MB)",
        "tuner.model_check": check,
        **({"tuner.profile_top": prof} if prof else {}),
    }


def _log_model(
    native: Native, row: pd.Series, ref: Reference, model: str, hardware: str, run_id: str, register_as: str | None
) -> Any:
    """`native` logged as a pyfunc model under `run_id` (and registered as `register_as`);
    MLflow's ModelInfo. The caller holds `fluent_uri`."""
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    config = {**native.config, "model": model, "weights": ref.spec.weights, "seed": ref.spec.seed,
              "input_shape": list(native.example.shape[1:]),
              "weights_label": ref.weights_label, "data": ref.data_label, "hardware": hardware,
              "confirmed_p50_ms": _float(row.get("confirmed_p50_ms"))}  # fmt: skip
    signature = infer_signature(native.example.numpy(), native.outputs.numpy())
    # No input example: MLflow would load the model to check it while logging (and warns
    # without one); the signature says what it takes, and `_check` loads it back anyway.
    # MLflow prints "Successfully registered model ..." / "Created version ..." on stderr;
    # the line tuner prints after it says the same, with the alias.
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(LOADER),
            artifacts={"model": str(native.path)},
            model_config=config,
            signature=signature,
            pip_requirements=native.requirements,
            registered_model_name=register_as,
        )


def log_candidate(row: pd.Series, ref: Reference, tracker: Tracker, model: str, hardware: str) -> str:
    """A finalist saved in its runtime's form and logged (not registered) under its own
    trial run, for the serving search to serve; its `models:/m-<id>` URI."""
    from tuner.decide.pareto import variant_of

    with fluent_uri(tracker.uri), torch_settings_kept(), tempfile.TemporaryDirectory(prefix="tuner-export-") as tmp:
        native = save_native(variant_of(row), ref, Path(tmp) / "artifact")
        return str(_log_model(native, row, ref, model, hardware, str(row["mlflow_run_id"]), None).model_uri)


def _profile(native: Native, folder: Path, tracker: Tracker, run_id: str) -> str:
    """Profile the pick (deploy/profile.py) onto the recommended trial's run, under
    `profile/`; returns its five most expensive operators ("" without a trial run)."""
    from tuner.deploy.profile import profile

    if not run_id:
        return ""
    prof = profile(native, native.built, folder)
    for f in prof.files:
        tracker.log_artifact(run_id, f, "profile")
    return prof.text()


def _float(v: Any) -> float | None:
    return float(v) if v is not None and pd.notna(v) else None


def _check(uri: str, native: Native, ref: Reference, model: str) -> tuple[str, Agreement | None]:
    """The registered model, loaded through MLflow, against the built variant's outputs; and
    the fast decode's agreement measured with it (None for a model that takes no 3-channel
    images). It is downloaded into a folder of ours, removed after (MLflow's own would be
    left in /tmp)."""
    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="tuner-check-") as tmp:
        loaded = mlflow.pyfunc.load_model(uri, dst_path=tmp)
        got = torch.from_numpy(np.asarray(loaded.predict(native.example.numpy())))
        agreement = decode_agreement(loaded.predict, ref, model)
    diff = float((got - native.outputs).abs().max())
    scale = float(native.outputs.abs().max()) or 1.0
    verdict = "same outputs" if diff <= 1e-3 * scale + 1e-4 else "OUTPUTS DIFFER"
    return f"{verdict} as the built variant (max |diff| {diff:.3g} on {len(native.example)} inputs)", agreement


def decode_agreement(predict: Any, ref: Reference, model: str) -> Agreement | None:
    """The fast decode against the exact one (inputs/images.py), through `predict`: on the
    search's image files where it had them (`--data`) and one of them is a JPEG the fast
    path scales, else on photo-like JPEGs."""
    from tuner.inputs.models import image_preprocessing

    if ref.shape[0] != 3:
        return None
    prep = ImagePrep.of(image_preprocessing(model, ref.spec.weights, ref.shape[1])[0])
    photos = "photo-like JPEGs (synthetic), " + ", ".join(f"{w}x{h}" for w, h in PHOTO_SIZES)
    files = ref.data.eval_files or []
    if files:
        own = measure_agreement(prep, [Path(f).read_bytes() for f in files], predict,
                                f"the search's {len(files)} --data image(s)")  # fmt: skip
        if own.scaled:
            return own
        photos += f" (none of the search's {len(files)} --data image(s) is a JPEG the fast path scales)"
    return measure_agreement(prep, photo_set(), predict, photos)


def register_recommended(
    rec: pd.Series,
    ref: Reference,
    parent_id: str,
    model: str,
    tracker: Tracker,
    hardware: str,
    hardware_class: str = "",
    max_drop: float = 0.01,
) -> dict[str, str]:
    """Log the recommended row's variant as an MLflow model and register it; the parent
    run's tags say how it went. A variant that cannot be exported costs the search nothing
    else: its results are written already."""
    from mlflow.exceptions import MlflowException

    from tuner.decide.pareto import variant_of

    if tracker.down:
        return {"tuner.model_export": "skipped: the MLflow store was unreachable"}
    say("saving the recommended variant in its runtime's own form and registering it ...")
    try:
        tags = log_and_register(rec, variant_of(rec), ref, tracker, parent_id, model, hardware, hardware_class,
                                max_drop)  # fmt: skip
    except (VariantUnsupported, RuntimeError, MlflowException, OSError, ImportError) as e:
        say(f"warning: the recommended model was not logged: {one_line(e)}")
        return {"tuner.model_export": f"failed: {one_line(e)}"}
    say(f"model:   {tags['tuner.model_uri']} registered as {tags['tuner.registered_model']} (alias candidate)")
    say(f"         {tags['tuner.model_artifact']}: {tags['tuner.model_export']}; {tags['tuner.model_check']}")
    if "tuner.decode" in tags:
        say(f"         {tags['tuner.decode']}")
    if "tuner.profile_top" in tags:
        say(f"         where its time goes (profile on the recommended trial's run): {tags['tuner.profile_top']}")
    return tags
