"""Pydantic's errors as one line: file, source, field.

The declaration's validators raise ``ValueError("what is wrong")``; this module words the first error of a
``ValidationError`` as one line naming where it is (the file, "source 'a'", "sources[2]", "runs"), the
field, the value shown and what the declaration expects, and how many more problems there are. Where a
nested error sits is the declaration's business: it hands a ``Locate`` over (``declaration.locate``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]
# For an error at ``loc``: the model that holds the field, where that is in words, and the loc below it.
Locate = Callable[[Loc], tuple[type[BaseModel], str | None, Loc]]


class ConfigError(ValueError):
    """A configuration problem; the message is one line that says what and where."""


class FieldProblem(ValueError):
    """A rule across fields, reported on one of them (``loc`` below the model that raised it)."""

    def __init__(self, loc: Loc, text: str) -> None:
        super().__init__(text)
        self.loc = loc


def shown(value: Any, limit: int = 80) -> str:
    text = repr(value)  # repr escapes line breaks: the message stays one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


UNITS = (("_ms", "milliseconds"), ("_s", "seconds"), ("_seconds", "seconds"), ("_bytes", "bytes"))


def expected(info: FieldInfo, name: str) -> str:
    """What a field takes, in words, from its declaration: "an integer of milliseconds from 200 to 3600000"."""
    optional = get_origin(info.annotation) in (Union, UnionType) and type(None) in get_args(info.annotation)
    kind = next(t for t in get_args(info.annotation) if t is not type(None)) if optional else info.annotation
    base = get_origin(kind) or kind  # list[SourceConfig] -> list
    if base is Annotated:  # Annotated[int, Strict()] -> int
        base = get_args(kind)[0]
    if base is list:
        return "a non-empty list" if any(getattr(m, "min_length", 0) for m in info.metadata) else "a list"
    type_words: dict[Any, str] = {int: "an integer", float: "a number", str: "a string"}
    words = type_words.get(base, f"a {getattr(base, '__name__', base)}")
    unit = next((u for suffix, u in UNITS if name.endswith(suffix)), None)
    if unit:
        words += f" of {unit}"
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    if optional:
        words += " (or null)"
    return words


def describe(error: ErrorDetails, model: type[BaseModel], where: str | None, loc: Loc) -> str:
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    prefix = f"{where}: " if where else ""
    if not loc:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            required = [f"'{n}'" for n, f in model.model_fields.items() if f.is_required()]
            with_ = f" with {' and '.join(required)}" if required else ""
            return f"{prefix}expected a mapping{with_}, got {type(error['input']).__name__}"
        return f"{prefix}{cause if cause is not None else error['msg']}"
    name = loc[0]
    top = "top-level " if where is None else ""
    if kind == "missing":
        return f"{prefix}{top}field {name!r} is missing"
    if kind in ("extra_forbidden", "invalid_key"):  # invalid_key: a YAML key that is not a string
        return f"{prefix}{top}field {name!r} is not known (known fields: {', '.join(model.model_fields)})"
    if cause is not None:
        return f"{prefix}{top}field {name!r}: {cause}"
    info = model.model_fields.get(name) if isinstance(name, str) else None
    wanted = expected(info, name) if info is not None and isinstance(name, str) else error["msg"]
    return f"{prefix}{top}field {name!r}: {shown(error['input'])} is not valid; expected {wanted}"


def _priority(error: ErrorDetails) -> int:
    # A bad name first: every other message names the source by it.
    return 0 if error["loc"][-1:] == ("name",) else 1


def one_line(exc: ValidationError, locate: Locate, origin: str | None = None) -> str:
    errors = sorted(exc.errors(include_url=False), key=_priority)
    first = errors[0]
    loc: Loc = tuple(first["loc"])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldProblem):  # a rule across fields, reported on the field it names
        loc += cause.loc
    located_model, located_where, loc = locate(loc)
    text = describe(first, located_model, located_where, loc)
    if origin:
        text = f"{origin}: {text}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more {'problem' if len(errors) == 2 else 'problems'})"
    return " ".join(text.splitlines())
