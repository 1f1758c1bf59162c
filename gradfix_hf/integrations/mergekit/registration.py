"""The mergekit method: a gradfix_hf registry method as a subclass of mergekit's ``GroupMergeMethod`` (defined
on first use, so mergekit is imported only then), and :func:`register_methods`, which puts one per gradfix_hf
method into mergekit's registry. It unpacks mergekit's group of tensors and parameters for the kernel.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from ...methods import MergeMethod
from ...methods import registered_methods as gradfix_registry
from ...storage import check_finite
from .inputs import weight_names
from .kernel import merge_tensor
from .library import LOCK, import_merge_methods
from .parameters import mergekit_name, method_spec


@functools.lru_cache(maxsize=None)
def _method_class():
    """The mergekit method class (defined on first use: it subclasses a mergekit class)."""
    mk = import_merge_methods()

    class GradFixMergekitMethod(mk.GroupMergeMethod):
        """A gradfix_hf registry method as a mergekit method (one output tensor per call)."""

        def __init__(self, method: MergeMethod):
            self.method = method
            self.spec = method_spec(method)

        def merge_group(self, group, /, **parameters: Any) -> torch.Tensor:
            fine_tunes = group.non_base
            for entry in group.entries:
                check_finite(entry.tensor, f"{entry.id} tensor {group.metadata.name!r}")
            per_model = {name: parameters.get(name) for name in ("source", "votes", "weight")}
            own = {name: parameters[name] for name in self.method.parameter_names()}
            return merge_tensor(
                self.method, group.metadata.name, group.base.tensor, [e.tensor for e in fine_tunes],
                [per_model["source"][e.id] for e in fine_tunes],
                [per_model["votes"][e.id] if per_model["votes"] is not None else None for e in fine_tunes],
                [per_model["weight"][e.id] if per_model["weight"] is not None else 1.0 for e in fine_tunes],
                own, alpha=parameters["alpha"], force=parameters["force"],
                names=weight_names(group.base.id, group.metadata.name))

    return GradFixMergekitMethod


def register_methods() -> list[str]:
    """Register one mergekit method per gradfix_hf method; returns their mergekit names. Idempotent."""
    mk = import_merge_methods()
    cls = _method_class()
    with LOCK:
        present = {m.spec.name: m for m in mk.registered_methods()}
        names = []
        for method in gradfix_registry().values():
            name = mergekit_name(method.name)
            existing = present.get(name)
            if existing is None:
                mk.register(cls(method))
            elif not isinstance(existing, cls):
                raise ValueError(f"mergekit already has a merge method {name!r} that is not gradfix_hf's.")
            names.append(name)
    return names
