"""The merge-method registry (mergekit style): every method by name, unknown names get the closest one."""
from __future__ import annotations

from ..errors import RecipeError, did_you_mean
from .base import MergeMethod

_METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method``; a second method with the same name is an error (nothing is silently replaced)."""
    if method.name in _METHODS and _METHODS[method.name] is not method:
        raise ValueError(f"merge method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get(name: str, where: str = "method.name") -> MergeMethod:
    if name not in _METHODS:
        raise RecipeError(f"{where}: unknown merge method {name!r} (one of {', '.join(_METHODS)})."
                          f"{did_you_mean(name, _METHODS)}")
    return _METHODS[name]


def registered_methods() -> dict[str, MergeMethod]:
    return dict(_METHODS)
