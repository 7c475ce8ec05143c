"""The fp32 eager reference, computed once per search (docs/architecture.md §4).

The driver loads the model and data, runs the fp32 eager model over the eval set and
hands the result to every trial through Ray's object store (`tune.with_parameters`), which
also works on a cluster. Trials reload the weights themselves and check the digest, so a
trial can never be compared against a different model by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tuner.config.space import EvalSettings
from tuner.inputs.data import EvalData, load_eval_data
from tuner.inputs.models import ModelSpec, input_shape, load_model, weights_digest
from tuner.measure.accuracy import topk_accuracy

# A random-init model whose fp32 outputs are all below this is degenerate (mobilenet_v3,
# efficientnet: about 1e-10; resnet, convnext: 0.1 to 100).
DEGENERATE_LOGITS = 1e-4


@dataclass
class Reference:
    spec: ModelSpec  # resolved: weights is pretrained / random / a path, never "auto"
    shape: tuple[int, int, int]
    data: EvalData
    logits: torch.Tensor  # fp32 eager outputs on data.inputs
    digest: str
    weights_label: str
    has_labels: bool
    baseline_quality: float  # top-1 with labels, else 1.0 (agreement of fp32 with itself)
    flops_per_item: float = 0.0  # fp32 model FLOPs for one input (torch.utils.flop_counter)
    # Random-init weights only: BatchNorm statistics estimated on the calibration inputs,
    # applied on top of the seed's weights wherever the model is loaded (`apply_to`).
    bn_stats: dict[str, torch.Tensor] | None = None

    def load_module(self) -> torch.nn.Module:
        """The reference's fp32 model, freshly loaded (in a trial's own process)."""
        module = load_model(self.spec).module
        if self.bn_stats:
            module.load_state_dict(self.bn_stats, strict=False)
        return module

    @property
    def data_label(self) -> str:
        return self.data.label


def reference_for(spec: ModelSpec, settings: EvalSettings, data_dir: str | Path | None) -> Reference:
    """`prepare_reference` with a space file's `eval:` settings."""
    return prepare_reference(
        spec,
        input_size=settings.input_size,
        n_eval=settings.samples,
        n_calib=settings.calibration_samples,
        data_dir=data_dir,
    )


def prepare_reference(
    spec: ModelSpec,
    *,
    input_size: int,
    n_eval: int,
    n_calib: int,
    data_dir: str | Path | None = None,
    batch_size: int = 8,
) -> Reference:
    """Load model + data and compute the fp32 eager outputs. `spec` must be resolved."""
    loaded = load_model(spec)
    shape = input_shape(loaded.module, input_size)
    weights_label = loaded.weights_label
    with torch.inference_mode():
        probe = loaded.module(torch.zeros(1, *shape))
    data = load_eval_data(
        data_dir,
        shape,
        n_eval,
        n_calib,
        spec.seed,
        categories=loaded.categories,
        weights_transforms=loaded.transforms,
        num_outputs=probe.shape[-1],
    )
    with torch.inference_mode():
        logits = torch.cat([loaded.module(x) for x in data.inputs.split(batch_size)])
    bn_stats = None
    if spec.weights == "random" and float(logits.abs().max()) < DEGENERATE_LOGITS:
        # The random model's signal has vanished (see estimate_batchnorm_stats): give its
        # BatchNorm layers real statistics, or no variant could be judged against it.
        bn_stats = estimate_batchnorm_stats(loaded.module, data.calibration)
        if bn_stats:
            weights_label += (
                f"; BatchNorm statistics estimated on the {len(data.calibration)} calibration inputs "
                f"(its fp32 outputs had vanished: max |logit| {float(logits.abs().max()):.1e})"
            )
            with torch.inference_mode():
                logits = torch.cat([loaded.module(x) for x in data.inputs.split(batch_size)])
    with torch.inference_mode():
        flops = _count_flops(loaded.module, data.inputs[:1])
    has_labels = data.labels is not None
    quality = topk_accuracy(logits, data.labels)["top1"] if data.labels is not None else 1.0
    return Reference(
        spec=spec,
        shape=shape,
        data=data,
        logits=logits,
        digest=weights_digest(loaded.module),
        weights_label=weights_label,
        has_labels=has_labels,
        baseline_quality=quality,
        flops_per_item=flops,
        bn_stats=bn_stats,
    )


def estimate_batchnorm_stats(module: torch.nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Give a random-init model's BatchNorm layers the statistics of real activations.

    Freshly initialised BatchNorm layers (mean 0, var 1) do not normalise anything, and in
    deep nets such as mobilenet_v3 the signal then shrinks to logits of about 1e-10: every
    bf16 or int8 variant looks wrong against fp32 for a reason that no trained model has.
    One pass over `inputs` with the BatchNorm layers in training mode (cumulative average)
    fixes the scale. Returns the new BatchNorm buffers ({} when the model has none), so that
    trials can apply exactly the same values without recomputing them."""
    bns = {n: m for n, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    if not bns or len(inputs) < 2:
        return {}
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches seen
        m.train()
    with torch.no_grad():
        for x in inputs.split(8):
            if len(x) > 1:
                module(x)
    module.eval()
    state = module.state_dict()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {k: state[k].clone() for k in state if k.rpartition(".")[0] in bns and k.rpartition(".")[2] in buffers}


def _count_flops(module: torch.nn.Module, one_input: torch.Tensor) -> float:
    """FLOPs of one forward pass on one input (a multiply-add counts 2), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        module(one_input)
    return float(counter.get_total_flops())
