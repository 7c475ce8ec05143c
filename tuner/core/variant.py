"""`Variant`: the frozen description of one inference variant, and its feasibility rules.

A Variant is what Optuna samples, what a trial builds, what `recommended.yaml` holds and
what `python -m tuner measure` reads back. It is plain data: building it lives in `build/`.
"""

from __future__ import annotations

import enum
import importlib.util
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tuner.core.errors import ConfigError


class StrEnum(str, enum.Enum):
    """A str enum whose str() and format() are its value, as enum.StrEnum (Python 3.11+)
    gives: it is its own value in CSVs, MLflow tags, YAML-bound text and the terminal."""

    def __str__(self) -> str:
        return str(self.value)


class Precision(str, enum.Enum):
    FP32 = "fp32"  # on a GPU with TF32 off (torch leaves it on for cuDNN convolutions)
    TF32 = "tf32"  # fp32 tensors, matmuls and convolutions on a GPU's TF32 tensor cores
    BF16 = "bf16"
    FP16 = "fp16"


class Quantization(str, enum.Enum):
    """How each runtime gets there is in build/ (docs/runtimes.md): FX x86 for eager and
    TorchScript, PT2E for inductor, NNCF for OpenVINO, onnxruntime.quantization for ORT."""

    NONE = "none"
    DYNAMIC_INT8 = "dynamic_int8"  # weights int8, activations quantized on the fly
    STATIC_INT8 = "static_int8"  # weights and activations int8, calibrated


class CompileMode(str, enum.Enum):
    """How the model is compiled, or which runtime runs it (the `compile` dimension)."""

    EAGER = "eager"
    TORCHSCRIPT = "torchscript"  # trace + freeze + optimize_for_inference
    INDUCTOR = "inductor"  # torch.compile, inductor freezing on CPU
    INDUCTOR_MAX_AUTOTUNE = "inductor_max_autotune"
    INDUCTOR_REDUCE_OVERHEAD = "inductor_reduce_overhead"  # torch.compile's CUDA-graph mode: a GPU only
    ONNXRUNTIME = "onnxruntime"  # torch.onnx export, ONNX Runtime CPU execution provider
    OPENVINO = "openvino"  # ov.convert_model, CPU plugin, LATENCY hint, one stream
    OPENVINO_THROUGHPUT = "openvino_throughput"  # THROUGHPUT hint, the batch split over an async queue


INDUCTOR_COMPILES = (CompileMode.INDUCTOR, CompileMode.INDUCTOR_MAX_AUTOTUNE, CompileMode.INDUCTOR_REDUCE_OVERHEAD)
TORCH_COMPILES = (CompileMode.EAGER, CompileMode.TORCHSCRIPT, *INDUCTOR_COMPILES)
OPENVINO_COMPILES = (CompileMode.OPENVINO, CompileMode.OPENVINO_THROUGHPUT)

# What each runtime needs beyond torch (README's set-up installs all of them); a search on
# an install without them drops the runtime and says how to install it.
RUNTIME_PACKAGES: dict[CompileMode, tuple[str, ...]] = {
    CompileMode.ONNXRUNTIME: ("onnx", "onnxscript", "onnxruntime"),
    CompileMode.OPENVINO: ("openvino",),
    CompileMode.OPENVINO_THROUGHPUT: ("openvino",),
}
INT8_PACKAGES: dict[CompileMode, tuple[str, ...]] = {  # int8 beyond what the runtime itself needs
    CompileMode.INDUCTOR: ("torchao",),  # PT2E + X86InductorQuantizer
    CompileMode.INDUCTOR_MAX_AUTOTUNE: ("torchao",),
    CompileMode.OPENVINO: ("nncf",),
    CompileMode.OPENVINO_THROUGHPUT: ("nncf",),
}


class Device(StrEnum):
    """Where a search's trials run (`--device`; search/cluster.choose_device)."""

    CUDA = "cuda"  # one GPU each
    CPU = "cpu"


DEVICES: tuple[str, ...] = tuple(d.value for d in Device)


class Layout(str, enum.Enum):
    CONTIGUOUS = "contiguous"
    CHANNELS_LAST = "channels_last"


# Short names for run names and progress lines ("int8-static bs8 t2 torchscript cl").
_SHORT = {
    Quantization.DYNAMIC_INT8: "int8-dynamic",
    Quantization.STATIC_INT8: "int8-static",
    CompileMode.INDUCTOR_MAX_AUTOTUNE: "inductor-ma",
    CompileMode.INDUCTOR_REDUCE_OVERHEAD: "inductor-ro",
    CompileMode.ONNXRUNTIME: "ort",
    CompileMode.OPENVINO: "ov",
    CompileMode.OPENVINO_THROUGHPUT: "ov-tput",
    Layout.CONTIGUOUS: "nchw",
    Layout.CHANNELS_LAST: "cl",
}


@dataclass(frozen=True)
class Variant:
    """One point of the search space. Field order is the column order of trials.csv."""

    precision: Precision = Precision.FP32
    quantization: Quantization = Quantization.NONE
    batch_size: int = 1
    threads: int = 1
    compile: CompileMode = CompileMode.EAGER
    layout: Layout = Layout.CONTIGUOUS

    def __post_init__(self) -> None:
        for f, enum_type in (
            ("precision", Precision),
            ("quantization", Quantization),
            ("compile", CompileMode),
            ("layout", Layout),
        ):
            value = getattr(self, f)
            try:
                object.__setattr__(self, f, enum_type(value))
            except ValueError:
                allowed = ", ".join(e.value for e in enum_type)
                raise ConfigError(f"`{f}` must be one of {allowed}; got {value!r}") from None
        for f in ("batch_size", "threads"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{f}` must be an integer >= 1; got {value!r}")
        if (
            self.quantization is not Quantization.NONE
            and self.precision is not Precision.FP32
            and self.compile not in OPENVINO_COMPILES
        ):
            raise ConfigError(
                f"`precision` must be fp32 when `quantization` is {self.quantization.value} and `compile` is "
                f"{self.compile.value} (its layers left in float run fp32; only openvino and openvino_throughput "
                f"run them at another precision); got {self.precision.value}"
            )

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> Variant:
        """Build from a flat mapping (Tune config, YAML); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown variant key(s) {unknown}; allowed: {sorted(names)}")
        return cls(**{k: params[k] for k in names if k in params})

    def to_dict(self) -> dict[str, Any]:
        """Plain str/int values, safe for YAML, CSV and MLflow params."""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}

    @property
    def label(self) -> str:
        """Human-readable name, used as MLflow run name and in progress lines."""
        kind = _SHORT.get(self.quantization, self.precision.value)
        if self.quantization is not Quantization.NONE and self.precision is not Precision.FP32:
            kind += f"+{self.precision.value}"  # int8, the layers left in float at this precision
        comp = _SHORT.get(self.compile, self.compile.value)
        return f"{kind} bs{self.batch_size} t{self.threads} {comp} {_SHORT[self.layout]}"

    @property
    def complexity(self) -> tuple[int, int, int, int]:
        """Sort key for "prefer the simpler config" tie-breaks (docs/architecture.md §3):
        eager over compiled, fp32 over bf16 over int8, smaller batch."""
        compile_rank = list(CompileMode).index(self.compile)
        precision_rank = {Precision.FP32: 0, Precision.TF32: 1, Precision.BF16: 1, Precision.FP16: 2}[self.precision]
        quant_rank = 0 if self.quantization is Quantization.NONE else 3
        return (compile_rank, max(precision_rank, quant_rank), self.batch_size, self.threads)


BASELINE_FIELDS = {"precision": "fp32", "quantization": "none", "compile": "eager", "layout": "contiguous"}


@dataclass(frozen=True)
class Accepts:
    """What one compile mode (a runtime) runs, as its module under build/ declares it
    (`tuner.build.ACCEPTS` gathers them). The sampler's conditional space is derived from
    these declarations alone: it draws a precision, an int8 path, a layout or a batch only
    where the runtime has a choice, and a hand-written variant outside them is infeasible
    with the declared reason (`refusal`)."""

    float_precisions: bool = True  # a float variant draws its precision (False: fp32 only)
    int8: tuple[Quantization, ...] = (Quantization.STATIC_INT8, Quantization.DYNAMIC_INT8)  # the int8 paths it has
    int8_float_precision: bool = False  # int8 runs its layers left in float at a drawn precision (else fp32)
    layouts: bool = True  # the memory layout is drawn (False: NCHW input, the runtime picks its own)
    min_batch: int = 1  # each batch is split over parallel requests: batch sizes >= this only
    why: dict[str, str] = field(default_factory=dict)  # per refusal ("precision", "int8", "layout", "batch"): why


def refusal(v: Variant, accepts: Accepts) -> str | None:
    """Why `v` is outside what its runtime declares (Accepts), else None."""
    name = v.compile.value
    if v.quantization is Quantization.NONE and not accepts.float_precisions and v.precision is not Precision.FP32:
        return accepts.why.get("precision", f"{name} runs fp32 only")
    if v.quantization is not Quantization.NONE and v.quantization not in accepts.int8:
        return accepts.why.get("int8", f"{name} has no {v.quantization.value}")
    if not accepts.layouts and v.layout is not Layout.CONTIGUOUS:
        return accepts.why.get("layout", f"{name} takes NCHW input and chooses its own internal layout")
    if v.batch_size < accepts.min_batch:
        return accepts.why.get("batch", f"{name} needs a batch of at least {accepts.min_batch}")
    return None


@dataclass(frozen=True)
class MachineProbe:
    """Not a variant: a fixed kernel (a GEMM of `precision`, the ceiling's probe) timed like
    one, in the same interleaved rounds, to tell how fast the machine is right now."""

    precision: str  # a ceiling key: fp32, tf32, bf16, fp16 or int8
    threads: int

    @property
    def label(self) -> str:
        return f"machine probe ({self.precision})"

    def to_dict(self) -> dict[str, Any]:
        """What `inject_faults` rules match against: only an empty `when` matches the probe."""
        return {"probe": self.precision}


def ceiling_key(precision: str, quantization: str) -> str:
    """Which ceiling a variant is compared against."""
    return "int8" if quantization != "none" else precision


def baseline(threads: int) -> Variant:
    """Trial 0: fp32, eager, batch 1, all cores (docs/architecture.md §1)."""
    return Variant(batch_size=1, threads=threads)


def infeasible_reason(v: Variant, *, device: str = Device.CPU, fp16_native: bool, bf16_native: bool) -> str | None:
    """Why this variant cannot run on this hardware or this install, else None: the
    hardware's precisions, the device, the runtime's packages. (What a runtime runs at all
    is its declaration: `tuner.build.infeasible` checks both.)"""
    if v.precision is Precision.FP16 and not fp16_native:
        return "fp16 is not native on this hardware (no avx512_fp16/amx_fp16 and no CUDA)"
    if v.precision is Precision.TF32 and (device != Device.CUDA or not bf16_native):
        return "tf32 is a GPU tensor-core mode (compute capability 8.0+)"
    if v.precision is Precision.BF16 and not bf16_native:
        return "bf16 is not native on this hardware (no avx512_bf16/amx_bf16, and no GPU of compute capability 8.0+)"
    missing = missing_packages(v)
    if missing:
        return f"{' '.join(missing)} not installed: `pip install {' '.join(missing)}` (README's set-up installs it)"
    if v.compile is CompileMode.INDUCTOR_REDUCE_OVERHEAD and device != Device.CUDA:
        return "reduce-overhead captures and replays CUDA graphs: a GPU only"
    if v.quantization is not Quantization.NONE and device != Device.CPU:
        return "int8 variants (FX x86, PT2E x86-inductor, NNCF, ONNX Runtime QDQ) run on the CPU only"
    if v.compile not in TORCH_COMPILES and device != Device.CPU:
        return f"{v.compile.value} runs on the CPU here (its GPU providers are not wired in)"
    return None  # what each runtime runs at all is its own declaration (Accepts, `refusal`)


def unavailable_runtimes(compiles: list[CompileMode]) -> dict[str, str]:
    """What this install cannot run, for the search's one line per runtime that it drops:
    `compile` (the runtime) or `compile + int8` -> the pip line that would add it."""
    out = {}
    for c in compiles:
        missing = missing_packages(Variant(compile=c, batch_size=2))
        if missing:
            out[c.value] = f"`pip install {' '.join(missing)}`"
            continue
        missing_int8 = missing_packages(Variant(compile=c, batch_size=2, quantization=Quantization.STATIC_INT8))
        if missing_int8:
            out[f"{c.value} + int8"] = f"`pip install {' '.join(missing_int8)}`"
    return out


def missing_packages(v: Variant) -> list[str]:
    """The packages this variant's runtime needs and this install lacks (not imported here)."""
    needed = RUNTIME_PACKAGES.get(v.compile, ())
    if v.quantization is Quantization.STATIC_INT8 or (
        v.quantization is not Quantization.NONE and v.compile in INDUCTOR_COMPILES
    ):
        needed = (*needed, *INT8_PACKAGES.get(v.compile, ()))
    return [p for p in needed if importlib.util.find_spec(p) is None]


def variant_from_config(config: dict[str, Any]) -> Variant:
    """Tune config (sampled params + constants) -> Variant."""
    params = {k: v for k, v in config.items() if k in Variant.__dataclass_fields__}
    for name, field_ in SAMPLER_ALIASES.items():  # the sampler's conditional parameters
        if name in config:
            params[field_] = config[name]
    return Variant.from_dict(params)


# Optuna parameter -> Variant field, where a compile mode's choices differ from the others'
# (a categorical parameter keeps the same choices in every trial): search/sampling.py.
SAMPLER_ALIASES = {
    "compile_int8": "compile",
    "compile_dynamic": "compile",
    "batch_split": "batch_size",
    "precision_int8": "precision",
}


def config_key(config: dict[str, Any]) -> str:
    """Identity of a sampled config (the variant's label); module-level so it pickles."""
    return variant_from_config(config).label
