"""Validation problems and their one-line messages.

Exceptions::

    ValueError
     └── ValidationFailed      one or more Problems, one line each
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic
import pydantic_core

from kascade.api.v1alpha1.common import PATTERN_HINTS


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with one object: where it is, and what would be accepted."""

    source: str
    """The file (and document) the object came from."""
    kind: str | None
    """The object's kind, when known."""
    name: str | None
    """The object's metadata.name, when known."""
    path: str
    """Kubernetes-style field path, e.g. ``spec.replicas.initial``; empty for the object."""
    message: str
    """What is wrong and what is accepted."""

    def __str__(self) -> str:
        where = self.source
        if self.kind is not None:
            where += f": {self.kind}/{self.name or '<unnamed>'}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ValidationFailed(ValueError):
    """Objects were rejected; ``problems`` lists each problem, ``str()`` one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def field_path(loc: Iterable[int | str]) -> str:
    """Turns a pydantic location into a Kubernetes field path: ``spec.rules[1].when``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def problems_from_error(
    error: pydantic.ValidationError,
    *,
    model: type[pydantic.BaseModel],
    source: str,
    kind: str,
    name: str | None,
) -> list[Problem]:
    """One Problem per pydantic error, with messages reworded the way users need them."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        problems.extend(
            Problem(source=source, kind=kind, name=name, path=path, message=message)
            for message, path in _reworded(item, model=model)
        )
    return problems


def _reworded(
    item: pydantic_core.ErrorDetails, *, model: type[pydantic.BaseModel]
) -> list[tuple[str, str]]:
    """(message, field path) pairs for one pydantic error."""
    loc = list(item["loc"])
    path = field_path(loc)
    ctx = item.get("ctx") or {}
    kind = item["type"]
    if kind == "kascade_rule":
        # A rule failure carries the model's other failed rules (see KascadeModel).
        failures = [(ctx["message"], ctx["field_path"]), *ctx.get("more", ())]
        return [
            (str(message), (path + str(relative)) if path else str(relative).lstrip("."))
            for message, relative in failures
        ]
    if kind == "extra_forbidden":
        accepted = _accepted_fields(model, loc[:-1])
        return [
            ("unknown field" + (f" (accepted: {', '.join(accepted)})" if accepted else ""), path)
        ]
    if kind == "missing":
        return [("required field is missing", path)]
    message = item["msg"]
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in PATTERN_HINTS:
        message = f"must be {PATTERN_HINTS[ctx['pattern']]}"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    return [(message + _got(item.get("input")), path)]


def _got(value: Any) -> str:
    if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 80):
        return f" (got {value!r})"
    return ""


def _accepted_fields(model: type[pydantic.BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The wire names of the fields of the model found at ``loc`` (empty if unknown)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        for field_name, info in fields.items():
            if part in (info.alias, field_name):
                current = _model_in(info.annotation)
                break
        else:
            return []
    fields = getattr(current, "model_fields", None)
    if fields is None:
        return []
    return [info.alias or field_name for field_name, info in fields.items()]


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside Optional[...], list[...] or Annotated[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def parse_error(*, source: str, error: Exception) -> Problem:
    """A Problem for a YAML file that could not be parsed, naming its line."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    detail = getattr(error, "problem", None) or str(error)
    return Problem(source=where, kind=None, name=None, path="", message=f"invalid YAML: {detail}")


__all__ = [
    "Problem",
    "ValidationFailed",
    "field_path",
    "parse_error",
    "problems_from_error",
]
