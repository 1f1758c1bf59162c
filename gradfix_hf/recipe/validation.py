"""The checks every recipe section shares: a dataclass built from a YAML mapping (unknown keys refused with the
closest valid name), a value from a fixed set of choices, and a YAML file that must hold a mapping."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import RecipeError, did_you_mean


def unknown_key_hint(name: str, valid: list[str]) -> str:
    """The closest valid key, or the list of valid keys when none is close."""
    return did_you_mean(name, valid) or f" Valid keys: {', '.join(sorted(valid))}."


def check_choice(value: Any, choices: tuple[str, ...], where: str) -> None:
    """A RecipeError naming ``where`` unless ``value`` is one of ``choices`` (with the closest one)."""
    if value not in choices:
        raise RecipeError(f"{where}: {value!r} is not one of {', '.join(choices)}.{did_you_mean(value, choices)}")


def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a suggestion."""
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
