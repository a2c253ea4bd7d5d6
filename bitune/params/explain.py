"""One-line messages for params that fail validation, naming where the bad value came from.

A value comes from the params file, the strategy preset composed into it, or a `--set` override;
the message names that source (the file to edit, or the `--set` as typed), the key, and the fix: the
closest known key for a typo, the expected type and the value given for a type error.
"""

from __future__ import annotations

import difflib
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

# Pydantic error types that mean "the value has the wrong type" (not "out of range" or a validator's).
TYPE_ERRORS = ("literal_error", "int_from_float", "enum")
VALIDATOR_ERRORS = ("value_error", "assertion_error")  # bitune's own messages, which quote the value


@dataclass(frozen=True)
class ParamsOrigins:
    """Where the validated tree's values came from."""

    params_file: str
    overrides: dict[tuple[str, ...], str] = field(default_factory=dict)  # key path -> `--set` text
    strategy_file: Path | None = None  # the preset composed in under `strategy`, if one was


def explain(exc: ValidationError, model: type[BaseModel], origins: ParamsOrigins) -> str:
    """The first error of `exc` as one line; `(+N more)` when there are others."""
    first = exc.errors()[0]
    loc = tuple(str(part) for part in first["loc"])
    key = ".".join(loc) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    override = _override_of(loc, first["type"], origins.overrides)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key; {_known_keys_hint(model, loc)}"
    elif override is not None and _is_type_error(first["type"]):
        described = _describe(_annotation_at(model, loc))
        message = f"expected {described}, got {first['input']!r}{_quote_hint(first['input'])}"
    elif override is not None and loc == override and first["type"] not in VALIDATOR_ERRORS:
        message = f"{message} (got {first['input']!r})"
    if override is None:
        source = origins.params_file
        if len(loc) > 1 and loc[0] == "strategy" and origins.strategy_file is not None:
            source = str(origins.strategy_file)
        return f"{source}: {key}: {message}{more}"
    typed = origins.overrides[override]
    where = f" {key}" if loc != override else ""
    if first["type"] == "extra_forbidden":
        keys_file = origins.strategy_file if loc[0] == "strategy" and origins.strategy_file else None
        place = f"strategy keys: {keys_file}" if keys_file else f"keys: {origins.params_file}"
        return f"--set {typed}: unknown key{where}; {message.removeprefix('unknown key; ')} ({place}){more}"
    return f"--set {typed}:{where} {message}{more}"


def _override_of(
    loc: tuple[str, ...], error_type: str, overrides: dict[tuple[str, ...], str]
) -> tuple[str, ...] | None:
    """The `--set` path that put the bad value at `loc`: at or above it, or (for a key the override
    invented, as `strategi.rounds` invents `strategi`) below it."""
    for path in overrides:
        if loc[: len(path)] == path and loc:
            return path
        if error_type == "extra_forbidden" and path[: len(loc)] == loc and loc:
            return path
    return None


def _known_keys_hint(model: type[BaseModel], loc: tuple[str, ...]) -> str:
    parent = _model_of(_annotation_at(model, loc[:-1]))
    if parent is None or not loc:
        return "check the spelling against bitune/params/models.py"
    known = list(parent.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {'.'.join((*loc[:-1], close[0]))}?"
    return f"{'.'.join(loc[:-1]) or 'the top level'} has {', '.join(known)}"


def _quote_hint(given: Any) -> str:
    """For a list typed with an unquoted `layers[0:2]` in it (YAML reads its brackets as a nested
    list, so the whole `--set` value stayed text): the same list with those items quoted."""
    if not isinstance(given, str):
        return ""
    text = given.strip()
    if not (text.startswith("[") and text.endswith("]") and "[" in text[1:-1]):
        return ""
    items = [item.strip() for item in re.split(r",(?![^\[]*\])", text[1:-1])]  # commas outside brackets
    quoted = [f"'{item}'" if "[" in item and item[:1] not in "'\"" else item for item in items]
    return f"; quote items with brackets: [{', '.join(quoted)}]"


def _is_type_error(error_type: str) -> bool:
    return error_type.endswith(("_type", "_parsing")) or error_type in TYPE_ERRORS


def _annotation_at(model: type[BaseModel], loc: tuple[str, ...]) -> Any:
    """The declared type at a dotted path (list indexes included), or None when it leads nowhere."""
    annotation: Any = model
    for part in loc:
        annotation = _without_none(annotation)
        if part.isdigit() and get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
            continue
        section = _model_of(annotation)
        if section is None or part not in section.model_fields:
            return None
        annotation = section.model_fields[part].annotation
    return annotation


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [a for a in get_args(annotation) if a is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = _without_none(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _describe(annotation: Any) -> str:
    """A type as the user writes its values: 'an integer', 'one of auto, cpu, cuda', ..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kinds = " or ".join(_describe(a) for a in args if a is not type(None))
        return kinds + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return "a list like [a, b]"
    if _model_of(annotation) is not None:
        return "a section of keys"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", Path: "a path"}
    return names.get(annotation, getattr(annotation, "__name__", "a value of another type"))
