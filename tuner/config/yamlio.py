"""What every YAML file of ours shares (space files, nightly job files): a strict pydantic
base, reading a mapping, and one line per validation error that names the file, the key,
what is allowed and what was given. Validation has no side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not be ignored); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml_mapping(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; `error` names the file otherwise.

    An empty or all-comment file is an error too: it would silently mean "all defaults",
    which is what leaving the file out already gives."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raise error(
            f"{path}: the {what} is empty (or only comments); give at least one section, "
            "or leave the file out to get the defaults"
        )
    if not isinstance(raw, dict):
        raise error(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def _allowed_keys(section: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """The keys a file validated by `root` may have at `section`."""
    model: Any = root
    for part in section:
        if isinstance(part, int):
            continue  # a list index: same model
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        inner = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            model = inner[0]  # list[Model]
        else:
            return []
    return list(model.model_fields)


def format_errors(
    source: str | Path, err: ValidationError, root: type[BaseModel], what: str, flags: dict[str, str] | None = None
) -> str:
    """One line per error: where (the file's key path, or the CLI flag), what is wrong, what
    was given. `root` is the pydantic model of the whole file."""
    lines = [f"{source}: invalid {what}"]
    for e in err.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        got = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key; allowed here: {', '.join(_allowed_keys(e['loc'][:-1], root))}"
        if e["type"] == "enum" and "expected" in e.get("ctx", {}):
            msg = f"must be one of {e['ctx']['expected']}"
        where = f"`{flags[loc]}` ({loc})" if flags and loc in flags else f"`{loc}`"
        lines.append(f"  {where}: {msg} (got {got!r})")
    return "\n".join(lines)
