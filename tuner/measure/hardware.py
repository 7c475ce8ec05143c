"""Hardware fingerprint and capabilities.

The fingerprint goes on every MLflow run (tags `hw.*`) so that results from different
machines are never compared by accident; the capabilities decide which variants the
search space offers (e.g. fp16 only where the hardware runs it natively).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, replace
from functools import cache

from tuner.core.variant import Device


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cores: int
    isa: str  # the ISA flags that matter for inference kernels, comma-separated
    gpu: str  # "none" or the CUDA device name
    torch_version: str
    cuda_version: str  # the CUDA torch was built with ("none" for a CPU-only build)
    python_version: str
    gpu_driver: str = "none"  # the NVIDIA driver's version, where there is a GPU
    cudnn_version: str = "none"  # the cuDNN torch loads, where there is a GPU
    gpu_capability: str = "none"  # the GPU's CUDA compute capability, e.g. "9.0"

    @property
    def device(self) -> Device:
        return Device.CPU if self.gpu == "none" else Device.CUDA

    @property
    def bf16_native(self) -> bool:
        """bf16 kernels: AVX512_BF16/AMX on the CPU; compute capability 8.0+ (Ampere on) on a GPU."""
        if self.device is Device.CUDA:
            major = self.gpu_capability.split(".")[0]
            return not major.isdigit() or int(major) >= 8  # unknown: let the trial find out
        return bool(set(self.isa.split(",")) & {"avx512_bf16", "amx_bf16"})

    @property
    def fp16_native(self) -> bool:
        flags = set(self.isa.split(","))
        return self.device is Device.CUDA or bool(flags & {"avx512_fp16", "amx_fp16"})

    @property
    def fingerprint(self) -> str:
        """Short stable id: same hardware + same torch -> same id (used to key history). With a
        GPU the driver and cuDNN count too (either can change its kernels); a machine without
        one keeps the id it always had."""
        key = f"{self.cpu_model}|{self.cores}|{self.isa}|{self.gpu}|{self.torch_version}"
        if self.gpu != "none":
            key += f"|{self.gpu_driver}|{self.cudnn_version}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def without_gpu(self) -> Hardware:
        """This machine as a CPU-only search sees it (`--device cpu` on a GPU machine): its
        fingerprint, ceiling and history are then those of its CPU."""
        return replace(self, gpu="none", gpu_driver="none", cudnn_version="none", gpu_capability="none")

    def for_device(self, device: Device | None) -> Hardware:
        """This machine as a search on `device` uses it: without its GPU on "cpu"; as it is on
        "cuda", or when no device was said (None)."""
        return self.without_gpu() if device == Device.CPU else self

    def tags(self) -> dict[str, str]:
        out = {f"hw.{k}": str(v) for k, v in asdict(self).items()}
        out["hw.fingerprint"] = self.fingerprint
        return out


_ISA_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "avx_vnni",
)


@cache
def detect() -> Hardware:
    """Probe this machine once per process (imports torch)."""
    import torch

    flags = _cpu_flags()
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    return Hardware(
        cpu_model=_cpu_model(),
        cores=usable_cores(),
        isa=",".join(f for f in _ISA_OF_INTEREST if f in flags),
        gpu=gpu,
        torch_version=torch.__version__,
        cuda_version=str(torch.version.cuda or "none"),
        python_version=platform.python_version(),
        gpu_driver=_gpu_driver() if cuda else "none",
        cudnn_version=str(torch.backends.cudnn.version() or "none") if cuda else "none",
        gpu_capability=".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else "none",
    )


def _gpu_driver() -> str:
    """The NVIDIA driver's version, from NVML (the `nvidia-ml-py` that CUDA builds of torch
    depend on), else `nvidia-smi`; "unknown" when neither answers."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or NVML absent
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
        return out.stdout.split("\n")[0].strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
