"""The checks every recipe section shares: a dataclass built from a YAML mapping (unknown keys refused with the
closest valid name), every field checked against its annotation, a value from a fixed set of choices, and a YAML
file that must hold a mapping."""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from ..errors import RecipeError, did_you_mean


def unknown_key_hint(name: str, valid: list[str]) -> str:
    """The closest valid key, or the list of valid keys when none is close."""
    return did_you_mean(name, valid) or f" Valid keys: {', '.join(sorted(valid))}."


def check_choice(value: Any, choices: tuple[str, ...], where: str) -> None:
    """A RecipeError naming ``where`` unless ``value`` is one of ``choices`` (with the closest one)."""
    if value not in choices:
        raise RecipeError(f"{where}: {value!r} is not one of {', '.join(choices)}.{did_you_mean(value, choices)}")


# ------------------------------------------------------------------------------------- fields vs annotations
@functools.lru_cache(maxsize=None)
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _expected(hint: Any) -> str:
    """How a message names what ``hint`` accepts: ``an integer``, ``a finite number``, ``a string or null``…"""
    if hint is Any:
        return "anything"
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        words = [_expected(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    kind = origin or hint
    if dataclasses.is_dataclass(kind):
        return getattr(kind, "EXPECTED", "a mapping")
    named = {bool: "true or false (a YAML boolean)", int: "an integer", float: "a finite number", str: "a string",
             list: "a list", tuple: "a list", dict: "a mapping", collections.abc.Mapping: "a mapping",
             collections.abc.Callable: "callable"}
    return named.get(kind, f"a {getattr(kind, '__name__', kind)}")


def type_mismatch(value: Any, hint: Any, where: str) -> Optional[tuple[str, Any, Any]]:
    """``(where, hint, value)`` of the first part of ``value`` that does not match ``hint`` (the key of a list
    element or mapping value is ``where[i]``), or None. YAML's types: a bool is ``true``/``false`` only, an int is
    not a bool, a float is a finite int or float; a list may be a tuple and a dict any mapping (whose keys are
    the section's business: unknown keys are refused with a hint)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (Union, types.UnionType):
        matches = any(type_mismatch(value, arm, where) is None for arm in args)
        return None if matches else (where, hint, value)
    kind = origin or hint
    if kind is type(None):
        ok = value is None
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind in (list, tuple, collections.abc.Sequence):
        ok = isinstance(value, (list, tuple))
    elif kind in (dict, collections.abc.Mapping):
        ok = isinstance(value, Mapping)
    elif kind is collections.abc.Callable:
        return None if callable(value) else (where, hint, value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        return (where, hint, value)
    if isinstance(value, (list, tuple)) and args:
        items = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        if items is None and len(args) != len(value):
            return (where, hint, value)
        for i, item in enumerate(value):
            found = type_mismatch(item, items if items is not None else args[i], f"{where}[{i}]")
            if found:
                return found
    if isinstance(value, Mapping) and len(args) == 2:
        for key, item in value.items():
            found = type_mismatch(item, args[1], f"{where}[{key!r}]")
            if found:
                return found
    return None


def check_fields(section: Any, where: str) -> None:
    """A RecipeError naming the key unless every field of dataclass ``section`` matches its annotation (see
    :func:`type_mismatch`): ``data.seed: must be an integer, got the string '3'.``. Called from each section's
    ``__post_init__`` once nested sections are built; ranges and choices are checked after it, by the section."""
    hints = _field_hints(type(section))
    for f in dataclasses.fields(section):
        found = type_mismatch(getattr(section, f.name), hints[f.name], f"{where}.{f.name}" if where else f.name)
        if found:
            key, hint, value = found
            expected = _expected(hint)
            got = f"the string {value!r}" if isinstance(value, str) and "a string" not in expected else repr(value)
            raise RecipeError(f"{key}: must be {expected}, got {got}.")


def paths_as_strings(section: Any, names: tuple[str, ...]) -> None:
    """Fields that hold a file or folder: a ``pathlib.Path`` (Python API) is kept as its string."""
    for name in names:
        value = getattr(section, name)
        if isinstance(value, os.PathLike):
            object.__setattr__(section, name, os.fspath(value))


# -------------------------------------------------------------------------------------- sections from YAML
def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion.

    A section's own messages name its keys from its default place, ``cls.WHERE`` (``tasks.weight``,
    ``data.seed``); a section built elsewhere has them renamed to where it sits (``tasks[1].weight``,
    ``tasks.data.seed`` → ``tasks[1].data.seed`` one level up)."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {type(raw).__name__} ({raw!r}).")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in raw:
        if key not in names:
            raise RecipeError(f"{where}: unknown key {key!r}.{unknown_key_hint(str(key), names)}")
    try:
        return cls(**raw)
    except TypeError as exc:  # a required key is missing
        raise RecipeError(f"{where}: {exc}") from None
    except RecipeError as exc:
        default = getattr(cls, "WHERE", "")
        message = str(exc)
        if default and default != where and message[len(default):len(default) + 1] in (".", ":") \
                and message.startswith(default):
            raise RecipeError(where + message[len(default):]) from None
        raise


#: what a recipe file must hold (the error for one that does not)
RECIPE_EXPECTATION = "a recipe must be a YAML mapping with at least 'models'"


def read_yaml_mapping(path: Path, what: str, expectation: str) -> dict:
    """A YAML file that must hold a mapping, or a RecipeError naming the file and what is wrong."""
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{path}: {expectation}.")
    return dict(raw)
