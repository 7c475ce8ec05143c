"""Quality of a variant's outputs against the fp32 eager reference (docs/architecture.md §4).

Always: top-1 agreement with the reference, mean cosine similarity of the output rows and
the max absolute error. With labels: top-1 and top-5 accuracy too. All comparisons are
done in fp32 on the CPU, whatever the variant's dtype and device.
"""

from __future__ import annotations

import torch


def fidelity(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How close `outputs` [N, C] are to the fp32 `reference` [N, C]."""
    out = outputs.detach().float().cpu().reshape(len(outputs), -1)
    ref = reference.detach().float().cpu().reshape(len(reference), -1)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from reference {tuple(ref.shape)}")
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
    finite = bool(torch.isfinite(out).all())
    return {
        "top1_agreement": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        "cosine_similarity": float(cos.mean()) if finite else 0.0,
        "max_abs_error": float((out - ref).abs().max()) if finite else float("inf"),
    }


def topk_accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy against integer labels [N]."""
    out = outputs.detach().float().cpu()
    k = min(5, out.shape[1])
    top = out.topk(k, dim=1).indices
    lab = labels.cpu().view(-1, 1)
    return {
        "top1": float((top[:, :1] == lab).any(1).float().mean()),
        "top5": float((top == lab).any(1).float().mean()),
    }


def quality(metrics: dict[str, float], has_labels: bool) -> float:
    """The single quality figure that the selection optimises: top-1 with labels,
    else top-1 agreement with the fp32 reference (1.0 for the reference itself)."""
    return metrics["top1"] if has_labels else metrics["top1_agreement"]


def accuracy_drop(q: float, q_baseline: float) -> float:
    """Relative drop against the baseline (0.01 = 1%); never negative-infinite."""
    if q_baseline <= 0:
        return 0.0 if q >= q_baseline else 1.0
    return (q_baseline - q) / q_baseline
