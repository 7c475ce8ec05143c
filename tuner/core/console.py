"""What the user reads in the terminal: one `say` for every progress and summary line, so
output order stays right when Ray, MLflow and our own lines interleave (flushed at once)."""

from __future__ import annotations


def say(msg: str = "") -> None:
    print(msg, flush=True)


def safe_name(model: str) -> str:
    """A model name (`resnet50`, `pkg.mod:factory`, `a/b`) as one file-name component."""
    return model.replace(":", "_").replace("/", "_")
