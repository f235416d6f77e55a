"""The study spec reference, generated from the pydantic models so the docs cannot drift.

`spec_reference()` returns the Markdown page: one table per model (`StudySpec` and every model
nested in it, such as `Budget`), with each field's type, allowed range, default and description,
all read from the fields themselves. The docs site's hook (docs/hooks/spec_reference.py) serves
it as `spec.md`; `python -m batchlab.docs` prints it.
"""

from __future__ import annotations

import inspect
import json
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from batchlab.spec import EXECUTION_FIELDS, StudySpec

_SCALARS = {str: "string", int: "integer", float: "float", bool: "boolean"}

INTRO = """\
# Study spec reference

A study is a TOML file, a preset (`batchlab run --preset NAME`), or both, plus
`--set key=value` overrides (`--set budget.epochs=3`, `--set "seeds=[0,1]"`); from Python, a
dict or a `batchlab.StudySpec` given to `batchlab.run_study`. A file may carry `[small]` and
`[full]` tables of fields that `--scale small|full` applies on top.

Every field is validated once, before anything runs: an unknown key, a value out of range or
two budgets at once is a one-line error naming the field (exit status 2), and nothing is written
to the store. Trials are the grid `batch_sizes x lrs x seeds` (per variant, plus control runs).

This page is generated from the spec's pydantic models (`batchlab.spec`) when the docs are
built. Fields marked *execution* say where and how fast to run, not what: they are left out of a
trial's id, so changing them never reruns a finished trial. Other fields enter the id only when
they differ from their default.
"""


def _constraint(meta: object) -> str | None:
    if isinstance(meta, annotated_types.Gt):
        return f"> {meta.gt}"
    if isinstance(meta, annotated_types.Ge):
        return f">= {meta.ge}"
    if isinstance(meta, annotated_types.Lt):
        return f"< {meta.lt}"
    if isinstance(meta, annotated_types.Le):
        return f"<= {meta.le}"
    if isinstance(meta, annotated_types.MinLen):
        return f"length >= {meta.min_length}"
    if isinstance(meta, annotated_types.MaxLen):
        return f"length <= {meta.max_length}"
    return None


def constraints(metadata: list[Any]) -> str:
    """Range constraints (`Field(gt=0)` and the like) as text, e.g. ">= 0, < 1"."""
    parts: list[str] = []
    for meta in metadata:
        inner = meta.metadata if isinstance(meta, FieldInfo) else [meta]
        parts.extend(c for m in inner if (c := _constraint(m)) is not None)
    return ", ".join(parts)


def anchor(model: type[BaseModel]) -> str:
    """The heading anchor of a model's table on the page (mkdocs' default slug)."""
    return model.__name__.lower()


def type_text(tp: object) -> str:
    """A field's type in TOML terms: "integer", "list of float", "\"sgd\" or \"adam\"", ..."""
    if tp is type(None):
        return "none"
    if tp is Any:
        return "any"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        rng = constraints(list(args[1:]))
        return type_text(args[0]) + (f" ({rng})" if rng else "")
    if origin is Union or origin is types.UnionType:
        return " or ".join(type_text(a) for a in args)
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_text(args[0])}"
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is dict:
        return "table" if args[1] is Any else f"table of {type_text(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{anchor(tp)})"
    if isinstance(tp, type):
        return _SCALARS.get(tp, tp.__name__)
    return str(tp)


def toml_text(value: object) -> str:
    """A default value as it would be written in a study file."""
    if isinstance(value, BaseModel):
        return toml_text(value.model_dump(exclude_none=True))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + " }"
    return str(value)


def default_text(field: FieldInfo) -> str:
    """ "required", "unset" (None: the feature is off) or the default as TOML."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined:
        return "unset"
    return f"`{toml_text(value)}`"


def nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The models that `model`'s fields hold (e.g. StudySpec -> Budget, Schedule), in order."""
    found: list[type[BaseModel]] = []

    def walk(tp: object) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in found and tp is not model:
                found.append(tp)
                for f in tp.model_fields.values():
                    walk(f.annotation)
            return
        for arg in get_args(tp):
            walk(arg)

    for field in model.model_fields.values():
        walk(field.annotation)
    return found


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def model_table(model: type[BaseModel], *, execution: frozenset[str] = frozenset()) -> str:
    """A Markdown table of `model`'s fields: name, type, default, description."""
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        kind = type_text(field.annotation)
        rng = constraints(field.metadata)
        if rng:
            kind += f" ({rng})"
        desc = field.description or ""
        if name in execution:
            desc = f"*Execution.* {desc}"
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(default_text(field))} | {_cell(desc)} |")
    return "\n".join(rows) + "\n"


def _section(model: type[BaseModel], execution: frozenset[str] = frozenset()) -> str:
    doc = inspect.cleandoc(model.__doc__ or "")
    return f"## {model.__name__}\n\n{doc}\n\n{model_table(model, execution=execution)}"


def spec_reference() -> str:
    """The whole reference page, in Markdown."""
    parts = [INTRO, _section(StudySpec, EXECUTION_FIELDS)]
    parts.extend(_section(m) for m in nested_models(StudySpec))
    return "\n".join(parts)


if __name__ == "__main__":
    print(spec_reference())
