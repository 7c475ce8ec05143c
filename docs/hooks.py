"""MkDocs hooks (mkdocs.yml `hooks:`): the reference tables are generated from the code at
build time, never written by hand. A page asks for one with a marker on a line of its own:

    <!-- tuner:metrics -->    every figure a trial reports (tuner/core/schema.py), and the
                              confirmed figures' naming rule
    <!-- tuner:space -->      every key of a search-space file (tuner/config/space.py's
                              pydantic models: type, default, bounds, meaning)
    <!-- tuner:commands -->   every command's synopsis (tuner/cli/main.py's parser)
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from typing import Any


def metrics() -> str:
    from tuner.core.schema import CONFIRMED_INTERVALS, CONFIRMED_VALUES, SCHEMA, confirmed

    rows = ["| metric | unit | meaning |", "|---|---|---|"]
    for m in SCHEMA:
        where = "" if m.mlflow else " (trials.csv only, not an MLflow metric)"
        rows.append(f"| `{m.name}` | {m.unit or '-'} | {m.doc}{where} |")
    for figure in CONFIRMED_INTERVALS:
        value, low, high = confirmed(figure)
        rows.append(f"| `{value}`, `{low}`, `{high}` | | confirmed `{figure}` and its 95% interval (finalists only) |")
    for figure in CONFIRMED_VALUES:
        rows.append(f"| `confirmed_{figure}` | | confirmed `{figure}` (finalists only) |")
    return "\n".join(rows)


def _type(a: Any) -> str:
    origin, args = typing.get_origin(a), typing.get_args(a)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(x) for x in args)
    if origin is typing.Literal:
        return "string"
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict or a is dict:
        return "mapping"
    if a is type(None):
        return "null"
    if isinstance(a, type) and issubclass(a, enum.Enum):
        return "string"
    if isinstance(a, type) and a.__module__.startswith("tuner."):
        return "mapping"
    return getattr(a, "__name__", str(a)).replace("str", "string").replace("bool", "true/false")


def _allowed(annotation: Any, metadata: list[Any]) -> str:
    parts = []
    for arg in typing.get_args(annotation) or (annotation,):
        inner = typing.get_args(arg)
        for a in inner or (arg,):
            if isinstance(a, type) and issubclass(a, enum.Enum):
                parts.append(", ".join(e.value for e in a))
            elif isinstance(a, str):
                parts.append(a)
    for m in metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            if getattr(m, name, None) is not None:
                parts.append(f"{sign} {getattr(m, name)}")
    return "; ".join(parts)


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    v = field.get_default(call_default_factory=True)
    if isinstance(v, list):
        v = [e.value if isinstance(e, enum.Enum) else e for e in v]
    return "null" if v is None else f"`{v}`"


def _table(model: Any) -> list[str]:
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, f in model.model_fields.items():
        rows.append(f"| `{name}` | {_type(f.annotation)} | {_default(f)} | {_allowed(f.annotation, f.metadata)} | "
                    f"{f.description or ''} |")  # fmt: skip
    return rows


def space() -> str:
    from tuner.config.space import FaultRule, SearchSpace

    out: list[str] = []
    for section, f in SearchSpace.model_fields.items():
        model = f.annotation if isinstance(f.annotation, type) else FaultRule
        kind = "a list of rules, each" if model is FaultRule else "a mapping"
        doc = " ".join((model.__doc__ or "").split())
        out += [f"### `{section}:`", "", f"{doc} ({kind} with these keys)".strip(), "", *_table(model), ""]
    return "\n".join(out)


def commands() -> str:
    from tuner.cli.main import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}  # type: ignore[attr-defined]
    out = []
    for name, parser in sub.choices.items():  # type: ignore[attr-defined]
        usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
        out += [f"### `{name}`", "", f"{helps.get(name, '')}.", "", "```", usage, "```", ""]
    return "\n".join(out)


MARKERS: dict[str, Callable[[], str]] = {
    "<!-- tuner:metrics -->": metrics,
    "<!-- tuner:space -->": space,
    "<!-- tuner:commands -->": commands,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
