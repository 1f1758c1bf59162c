"""Task Arithmetic (Ilharco et al., 2023): the weighted sum of the task vectors, no mask."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .base import MergeMethod, ParameterSpec, TensorInputs
from .registry import register


def task_arithmetic(vectors: list[torch.Tensor], weights: list[float], *, normalize: bool = False) -> torch.Tensor:
    """Σ_t w_t·τ_t, divided by Σ_t w_t when ``normalize`` (the authors' ``mean`` merge with unit weights)."""
    merged = torch.zeros_like(vectors[0])
    for vector, weight in zip(vectors, weights):
        merged.add_(vector, alpha=weight)
    if normalize:
        total = sum(weights)
        if total == 0:
            raise ValueError("task arithmetic with normalize: the task weights sum to 0")
        merged.div_(total)
    return merged


class TaskArithmetic(MergeMethod):
    def combine(self, vectors: list[torch.Tensor], inputs: TensorInputs, params: Mapping[str, Any]) -> torch.Tensor:
        return task_arithmetic(vectors, inputs.weights, normalize=params["normalize"])


TASK_ARITHMETIC = register(TaskArithmetic(
    name="task_arithmetic", pretty_name="Task Arithmetic",
    description="θ_B + α·Σ_t w_t·τ_t (no mask): the unmasked baseline for merges and multi-source transport.",
    parameters=(ParameterSpec("normalize", bool, False, "divide the weighted sum by the sum of weights"),),
))
