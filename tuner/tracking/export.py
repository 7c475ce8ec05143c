"""The recommended variant as a deployable MLflow model (README "The recommended model").

The variant is rebuilt in the driver from the reference's weights and saved as TorchScript:
`torch.jit.trace` of the built module (precision cast and quantization applied), frozen
when loaded, which is what the `torchscript` compile mode measures. `torch.compile` cannot
be saved, so an `inductor*` variant is exported *before* compilation, and its `variant.yaml`
says that `torch.compile` must be applied after loading to get the measured speed.

It is logged with `mlflow.pyfunc.log_model` under the search's parent run, as a small
`TorchScriptModel` wrapper (input: an fp32 NCHW float32 array; output: the logits as
float32), with its config, an input signature and an input example; and registered in the
Model Registry as `tuner-<model>` with the alias `candidate`. The nightly job moves the
alias `champion`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tuner.build import build
from tuner.core.console import say
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.variant import TORCH_COMPILES, CompileMode, Variant
from tuner.inputs.reference import Reference
from tuner.tracking.store import Tracker, registered_name

try:  # mlflow is a dependency; the import is kept local to this module's users
    import mlflow.pyfunc

    _Base: Any = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover
    _Base = object


class TorchScriptModel(_Base):
    """MLflow pyfunc wrapper around the exported TorchScript file."""

    def load_context(self, context: Any) -> None:
        cfg = yaml.safe_load(Path(context.artifacts["variant"]).read_text())
        self.dtype = getattr(torch, cfg["input_dtype"])
        self.channels_last = cfg["channels_last"]
        # Saved unfrozen (a frozen graph may not load back: "required keyword attribute 'value'
        # is undefined"); freezing here gives the same inference graph.
        self.module = torch.jit.freeze(torch.jit.load(context.artifacts["torchscript"], map_location="cpu").eval())
        if cfg["variant"]["compile"] == CompileMode.TORCHSCRIPT.value:  # as the torchscript variant was measured
            self.module = torch.jit.optimize_for_inference(self.module)

    # No type hints on predict: MLflow reads them as a schema ("must be wrapped in list[...]")
    # and warns; the signature logged with the model says what it takes.
    def predict(self, context, model_input, params=None):
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32)).to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(x).float().cpu().numpy()


@dataclass
class Exported:
    folder: Path
    how: str  # "the torchscript variant itself" / "torch.jit.trace + freeze (...)"
    outputs: torch.Tensor  # the built variant's own outputs on `example`
    example: torch.Tensor  # fp32 NCHW


def export_torchscript(variant: Variant, ref: Reference, folder: Path) -> Exported:
    """Build `variant` from the reference weights and save it as TorchScript + variant.yaml."""
    built = build(ref.load_module(), variant, ref.data.calibration)
    example = ref.data.inputs[: variant.batch_size]
    x = built.prepare(example)
    with torch.inference_mode():
        outputs = built.run(x).float()
    with torch.no_grad():
        scripted = torch.jit.trace(built.module, x, check_trace=False)
    how = "torch.jit.trace of the built module, frozen when loaded"
    if variant.compile not in TORCH_COMPILES:
        # The runtime's own artifact (ONNX file, OpenVINO IR) is not exported yet: say so.
        how = (f"the fp32 torch module (torch.jit.trace), NOT the {variant.compile.value} artifact that was "
               "measured: build that variant with `python -m tuner measure --config recommended.yaml`")  # fmt: skip
    elif variant.compile in (CompileMode.INDUCTOR, CompileMode.INDUCTOR_MAX_AUTOTUNE):
        how += f"; apply torch.compile ({variant.compile.value}) after loading for the measured speed"
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(folder / "model.pt"))
    (folder / "variant.yaml").write_text(
        yaml.safe_dump(
            {
                "variant": variant.to_dict(),
                "label": variant.label,
                "export": how,
                "input_dtype": str(built.input_dtype).removeprefix("torch."),
                "channels_last": built.memory_format == torch.channels_last,
                "input_shape": [None, *ref.shape],
                "weights": ref.weights_label,
            },
            sort_keys=False,
        )
    )
    return Exported(folder, how, outputs, example)


def log_and_register(variant: Variant, ref: Reference, tracker: Tracker, parent_id: str, model: str) -> dict[str, str]:
    """Export, log under the parent run and register as `tuner-<model>` @ candidate.
    Returns tags for the parent run (model URI, registered name and version, how exported)."""
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracker.uri)
    with tempfile.TemporaryDirectory() as tmp:
        exp = export_torchscript(variant, ref, Path(tmp) / "export")
        example = exp.example.numpy()
        signature = infer_signature(example, exp.outputs.numpy())
        name = registered_name(model)
        with mlflow.start_run(run_id=parent_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=TorchScriptModel(),
                artifacts={"torchscript": str(exp.folder / "model.pt"), "variant": str(exp.folder / "variant.yaml")},
                signature=signature,
                input_example=example[:1],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pyyaml"],
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    tracker.set_alias(name, "candidate", version)
    return {
        "tuner.model_uri": info.model_uri,
        "tuner.registered_model": f"{name}/{version}",
        "tuner.model_export": exp.how,
    }


def register_recommended(rec: Any, ref: Reference, parent_id: str, model: str, tracker: Tracker) -> dict[str, str]:
    """Log the recommended row's variant as an MLflow model and register it; the parent
    run's tags say how it went. A variant that cannot be exported costs the search nothing
    else: its results are written already."""
    from mlflow.exceptions import MlflowException

    from tuner.decide.pareto import variant_of

    if tracker.down:
        return {"tuner.model_export": "skipped: the MLflow store was unreachable"}
    try:
        tags = log_and_register(variant_of(rec), ref, tracker, parent_id, model)
    except (VariantUnsupported, RuntimeError, MlflowException, OSError) as e:  # cannot rebuild or trace; registry
        say(f"warning: the recommended model was not logged: {one_line(e)}")
        return {"tuner.model_export": f"failed: {one_line(e)}"}
    say(f"model:   {tags['tuner.model_uri']} registered as {tags['tuner.registered_model']} (alias candidate)")
    return tags
