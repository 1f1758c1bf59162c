"""Names a package exports, imported from their modules when first used (PEP 562), so that importing the package
(``gradfix --help``, a recipe error) does not import torch, transformers or datasets before anything needs them.

``__getattr__, __dir__ = lazy_exports(__name__, {"name": ".module", ...})`` in a package's ``__init__``: the
first ``package.name`` (or ``from package import name``) imports ``.module`` and keeps the value
(``".module:other"`` exports the module's ``other`` under ``name``). An export may
share its name with a submodule — ``gradfix_hf.transport`` is the function while
``importlib.import_module("gradfix_hf.transport")`` is the package — and stays the export when that submodule is
imported (Python binds a freshly imported submodule on its package, which would otherwise replace it).
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Mapping

EXPORTS_ATTRIBUTE = "__lazy_exports__"


class _KeepsExports(types.ModuleType):
    """A package module whose exported names are not replaced by submodules of the same name."""

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get(EXPORTS_ATTRIBUTE, {})
        if (name in exports and isinstance(value, types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            return  # the submodule stays in sys.modules; the package's attribute is the export
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name → module relative to the
    package, or ``module:attribute``); call it from the package's ``__init__`` with ``__name__``."""
    module = sys.modules[package]
    table = dict(exports)
    module.__dict__[EXPORTS_ATTRIBUTE] = table
    module.__class__ = _KeepsExports

    def __getattr__(name: str) -> Any:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        where, _, attribute = source.partition(":")
        value = getattr(importlib.import_module(where, package), attribute or name)
        module.__dict__[name] = value  # later look-ups find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(table))

    return __getattr__, __dir__
