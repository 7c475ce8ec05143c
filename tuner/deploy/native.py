"""The pick in its runtime's own form, saved from the variant as it was built for the trials
(same weights, calibration, quantization and settings), with the settings the loader
(deploy/pyfunc_model.py) needs to run it the way it was measured:

| compile mode                  | artifact                                                      |
|-------------------------------|---------------------------------------------------------------|
| onnxruntime                   | the `.onnx` file as searched (QDQ for static int8) + session  |
| openvino, openvino_throughput | IR `model.xml` + `model.bin` (fp32 weights kept) + properties |
| inductor (any mode)           | an AOTInductor package `model.pt2` (freezing; PT2E int8; no   |
|                               | CUDA graphs for reduce-overhead)                              |
| eager (float)                 | an ExportedProgram `model.pt2`                                |
| torchscript, eager int8 (FX)  | TorchScript: nothing else reproduces FX int8 or the           |
|                               | TorchScript graph that was measured (deprecated in torch)     |

The AOTInductor package is compiled ahead of time for the variant's thread count; it is
the same graph and freezing as the trial's `torch.compile`, not the same generated code,
which is why `measure --model-uri` measures the artifact itself.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.build import BuiltVariant, build
from tuner.build.runtime import example_batch
from tuner.core.errors import VariantUnsupported, one_line
from tuner.core.variant import INDUCTOR_COMPILES, CompileMode, Quantization, Variant
from tuner.inputs.reference import Reference


@dataclass
class Native:
    """One saved artifact: `path` (a file, or the OpenVINO IR's folder) and the loader's
    `config` (deploy/pyfunc_model.py), what it is, and the built variant's own outputs on
    `example`, so that a loaded artifact can be checked against what was measured."""

    path: Path
    config: dict[str, Any]
    how: str
    requirements: list[str]
    outputs: torch.Tensor
    example: torch.Tensor  # fp32 NCHW, `batch_size` rows
    built: BuiltVariant  # the variant as the trials built it (for the outputs and the profile)

    @property
    def size_mb(self) -> float:
        files = [self.path] if self.path.is_file() else [f for f in self.path.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files) / 2**20


def artifact_kind(variant: Variant) -> str:
    """Which artifact reproduces `variant` (the table above)."""
    if variant.compile is CompileMode.ONNXRUNTIME:
        return "onnx"
    if variant.compile in (CompileMode.OPENVINO, CompileMode.OPENVINO_THROUGHPUT):
        return "openvino"
    if variant.compile in INDUCTOR_COMPILES:  # reduce-overhead's CUDA graphs are not in the package
        return "aoti"
    if variant.compile is CompileMode.EAGER and variant.quantization is Quantization.NONE:
        return "exported"
    return "torchscript"


def _version(package: str) -> str:
    from importlib.metadata import version

    return f"{package}=={version(package)}"


def save_native(variant: Variant, ref: Reference, folder: Path) -> Native:
    """Build `variant` from the reference's weights as the trials did, and save it in its
    runtime's form under `folder`. Raises VariantUnsupported where the export fails."""
    folder.mkdir(parents=True, exist_ok=True)
    calibration = ref.data.calibration
    example = ref.data.inputs[: variant.batch_size]
    if len(example) < variant.batch_size:
        example = example_batch(calibration, variant.batch_size)
    kind = artifact_kind(variant)
    config: dict[str, Any] = {"artifact": kind, "batch_size": variant.batch_size, "threads": variant.threads,
                              "variant": variant.to_dict(), "label": variant.label}  # fmt: skip
    if kind in ("onnx", "openvino"):
        built = build(ref.load_module(), variant, calibration)
        path, how, requirements = _save_runtime(kind, ref.load_module(), variant, calibration, folder, built, config)
    else:
        built, path, how = _save_torch(kind, ref.load_module(), variant, calibration, folder)
        config.update(input_dtype=str(built.input_dtype).removeprefix("torch."),
                      channels_last=built.memory_format == torch.channels_last,
                      optimize_for_inference=variant.compile is CompileMode.TORCHSCRIPT)  # fmt: skip
        requirements = [_version("torch")]
    with torch.inference_mode():
        outputs = built.run(built.prepare(example)).float()
    return Native(path, config, how, [*requirements, "numpy"], outputs, example, built)


def _save_runtime(
    kind: str, model: nn.Module, variant: Variant, calibration: torch.Tensor, folder: Path, built: BuiltVariant,
    config: dict[str, Any],
) -> tuple[Path, str, list[str]]:  # fmt: skip
    if kind == "onnx":
        from tuner.build.onnxrt import export_onnx, quantize_onnx, session_settings

        path = folder / "model.onnx"
        export_onnx(model.eval(), example_batch(calibration, variant.batch_size), path)
        if variant.quantization is not Quantization.NONE:
            fp32 = path.rename(folder / "model.fp32.onnx")
            quantize_onnx(fp32, path, variant.quantization, calibration, variant.batch_size)
            for f in folder.glob("*.onnx"):
                if f != path:
                    f.unlink()
        config["session"] = session_settings(variant.threads)
        return path, "the ONNX file the trial ran, with its session settings", [_version("onnxruntime")]
    import openvino as ov

    from tuner.build.openvino import compile_properties, convert

    ov_model = convert(model.eval(), variant, calibration)
    path = folder / "openvino"
    path.mkdir(exist_ok=True)
    ov.save_model(ov_model, str(path / "model.xml"), compress_to_fp16=False)  # fp16 weights by default
    requests = int(built.figures.get("runtime_requests", 1))
    props = {**compile_properties(variant, requests), "requests": requests}
    config["compile"] = props
    return (
        path,
        "the OpenVINO IR the trial compiled (fp32 weights kept), with its compile properties",
        [_version("openvino")],
    )


def _save_torch(
    kind: str, model: nn.Module, variant: Variant, calibration: torch.Tensor, folder: Path
) -> tuple[BuiltVariant, Path, str]:
    """The torch artifacts. The module is prepared by build()'s own steps (precision, int8,
    layout); `build` itself then compiles a copy for the outputs the artifact is checked on."""
    built = build(model, variant, calibration)
    module = built.module  # precision, int8 and layout applied; not compiled
    # A plain tensor, not built.prepare()'s inference tensor: torch.export traces with autograd on.
    x = example_batch(calibration, variant.batch_size).to(built.input_dtype)
    x = x.contiguous(memory_format=built.memory_format)
    try:
        if kind == "aoti":
            return (
                built,
                _aoti(module, x, variant, folder),
                (
                    f"an AOTInductor package (torch.export + aoti_compile_and_package, freezing, "
                    f"{variant.threads} thread(s))"
                ),
            )
        if kind == "exported":
            ep = torch.export.export(module, (x,))
            path = folder / "model.pt2"
            torch.export.save(ep, path)
            return built, path, "an ExportedProgram (torch.export) of the eager module"
    except Exception as e:  # export and AOTInductor raise many kinds (Unsupported, UserError, ...)
        raise VariantUnsupported(f"{kind} export failed: {one_line(e)}") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the docstring says why it is used
        traced = torch.jit.trace(module, x, check_trace=False)
        path = folder / "model.torchscript.pt"
        torch.jit.save(traced, str(path))
    what = "FX int8" if variant.quantization is not Quantization.NONE else "the TorchScript graph"
    return built, path, f"TorchScript (torch.jit.trace), deprecated in torch but the only form that reproduces {what}"


def _aoti(module: nn.Module, x: torch.Tensor, variant: Variant, folder: Path) -> Path:
    import torch._inductor

    if variant.quantization is not Quantization.NONE:
        # The int8 fusions are inductor freezing passes that torchao registers when imported.
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    path = folder / "model.pt2"
    configs = {"freezing": True, "cpp.threads": variant.threads,
               "max_autotune": variant.compile is CompileMode.INDUCTOR_MAX_AUTOTUNE}  # fmt: skip
    # Freezing applies only without grad (as the trial's inference-mode compile ran it).
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, (x,))
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=configs)
    return path
